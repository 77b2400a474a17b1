"""`ray job submit --working-dir . -- python -m cluster.train --config configs/quickstart.yaml` against a head
started with `ray start --head` on this machine (issue #4): the job SUCCEEDS and leaves a complete run folder.

The head is a real `ray start --head --block` process (tests/raycluster.py: free ports, private temp dir, token
auth by environment, stopped by PID); the job is submitted with the `ray` CLI, exactly as a user would.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psutil
import pytest

from raycluster import LocalRayCluster

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def train(config: str, run_root: Path, *overrides: str) -> list[str]:
    """A short `python -m cluster.train` run; absolute paths, as the job runs in Ray's copy of the working dir."""
    sets = [f"run.output_dir={run_root}", "run.name=r", f"run.cache_dir={ROOT / '.cache'}",  # the built model is reused
            "rollout.epochs=1", "env.task_seeds=[]", "env.num_tasks=2", "env.max_steps=3", "run.modes=[]",
            "rollout.seeds=[0]", "rollout.group_size=1", *overrides]
    return ["python", "-m", "cluster.train", "--config", config, *[a for o in sets for a in ("--set", o)]]


def assert_run_folder(run: Path) -> None:
    episodes = [json.loads(x) for x in (run / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) == 2 and all(e["error"] is None for e in episodes)
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0]
    assert "csr" in json.loads((run / "summary.json").read_text())
    services = json.loads((run / "services.json").read_text())
    assert services["ray"]["started"] is False  # the driver joined the cluster it was submitted to
    alive = [pid for pid, created in services["pids"].items()
             if psutil.pid_exists(int(pid)) and abs(psutil.Process(int(pid)).create_time() - created) < 1.0]
    assert alive == []  # and stopped what it started itself (its valkey server)


def test_ray_job_submit_runs_the_quickstart(tmp_path: Path) -> None:
    with LocalRayCluster() as rc:
        rc.start_head(num_cpus=2)
        sid = f"epiq-quickstart-{uuid.uuid4().hex[:8]}"
        proc = rc.submit(sid, ROOT, train("configs/quickstart.yaml", tmp_path))
        job = rc.job(sid)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert job["status"] == "SUCCEEDED", job
    assert "epiq: services healthy" in proc.stdout and "epiq: done: Last" in proc.stdout
    assert_run_folder(tmp_path / "r")
