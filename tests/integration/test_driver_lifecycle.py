"""The driver owns its services: a normal run, a run that raises and a SIGTERM'd run leave no process behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _driver(run_root: Path, env: dict[str, str], *overrides: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "cluster.train", "--config", "configs/quickstart.yaml",
            "--set", f"run.output_dir={run_root}", "--set", "run.name=r",
            *[a for o in ("rollout.seeds=[0]", "rollout.group_size=1", *overrides) for a in ("--set", o)]]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _started(run_dir: Path) -> dict:
    return json.loads((run_dir / "services.json").read_text())


def _leftovers(info: dict) -> list[str]:
    """Processes the run started that are still alive: its recorded PIDs, and anything using its Ray temp dir."""
    out = []
    for pid, created in info["pids"].items():
        try:
            p = psutil.Process(int(pid))
            if abs(p.create_time() - created) < 1.0 and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    temp = info["ray"]["temp_dir"]
    if temp:
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if temp in cmd:
                out.append(f"{p.info['pid']} {cmd[:120]}")
    redis_port = info["redis"].get("port")
    if redis_port:
        for c in psutil.net_connections(kind="tcp"):
            if c.laddr and c.laddr.port == redis_port and c.status == psutil.CONN_LISTEN:
                out.append(f"listener on redis port {redis_port} (pid {c.pid})")
    return out


def test_short_quickstart_runs_end_to_end_and_stops_services(tmp_path: Path, env_without_ray: dict) -> None:
    """The real entry point, a short TextWorld run: vLLM engine, memory shard, rollout actor, metrics written."""
    # no Q floor: with 4 steps every episode fails, and failure memories start below the quickstart's floor
    proc = _driver(tmp_path, env_without_ray, "rollout.epochs=2", "env.task_seeds=[]", "env.num_tasks=2",
                   "env.max_steps=4", "run.modes=[]", "memory.q_floor=null")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "epiq: services healthy" in out and "epiq: done: Last" in out and "epiq: services stopped" in out
    run = tmp_path / "r"
    episodes = [json.loads(x) for x in (run / "episodes.jsonl").read_text().splitlines()]
    assert sorted((e["epoch"], e["task_id"]) for e in episodes) == sorted(
        (ep, t) for ep in range(2) for t in {e["task_id"] for e in episodes})
    assert len(episodes) == 4 and all(e["error"] is None and e["steps"] >= 1 for e in episodes)
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1]
    assert metrics[1]["memory_count"] == 4  # every episode wrote one memory
    assert metrics[1]["retrieval_hit_rate"] > 0  # epoch 2 retrieved what epoch 1 wrote
    assert json.loads((run / "summary.json").read_text())["csr"] >= 0
    assert any((run / "tensorboard").iterdir())
    info = _started(run)
    assert info["redis"]["pid"] and info["ray"]["started"] and len(info["pids"]) >= 3
    assert _leftovers(info) == []
    assert (run / "config.yaml").is_file() and (run / "driver.log").is_file()
    assert (tmp_path / "r" / "ray").is_dir() and not (tmp_path / "r" / "ray").is_symlink()
    # a quiet terminal: the engines' and workers' output is in the run folder, not streamed to the driver's
    assert "(pid=" not in err and "pid=" not in out, err[-2000:]
    assert list((run / "ray" / "session_latest" / "logs").glob("worker-*.err"))


def test_driver_that_raises_stops_its_services(tmp_path: Path, env_without_ray: dict) -> None:
    # The embedder is loaded after the services start: a bad path makes the driver fail mid-run.
    proc = _driver(tmp_path, env_without_ray, "memory.embedder=/nonexistent/embedder")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1
    assert "epiq: error: memory.embedder '/nonexistent/embedder'" in err
    assert _leftovers(_started(tmp_path / "r")) == []


def test_sigterm_stops_the_driver_and_its_services(tmp_path: Path, env_without_ray: dict) -> None:
    proc = _driver(tmp_path, env_without_ray)
    services = tmp_path / "r" / "services.json"
    deadline = time.monotonic() + 120
    while not services.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "services never came up"
        time.sleep(0.05)
    info = _started(tmp_path / "r")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM  # killed mid-run, not a normal finish
    assert _leftovers(info) == []
