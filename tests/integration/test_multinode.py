"""Placement by resources on a two-node Ray (issue #7): a head offering the `rollout` worker group's Ray resources
and a second node offering the `inference` group's, both read from the rendered cpu-smoke overlay; the smoke
config (configs/k8s-cpu-smoke.yaml) is submitted with `ray job submit`, and the node id of every actor it started
(Ray's state API keeps dead actors) shows each component ran where its `resources` say.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from raycluster import LocalRayCluster
from test_ray_job_submit import ROOT, assert_run_folder, train

sys.path.insert(0, str(ROOT / "tests" / "k8s"))
import manifest_checks as mc  # noqa: E402

pytestmark = pytest.mark.slow
COMPONENTS = {"MemoryShard": "memory", "LLMEngine": "llm", "RolloutWorker": "rollout"}  # actor class -> config section


def node_resources(group: dict) -> tuple[float, dict[str, float]]:
    """What one pod of a worker group offers Ray: (CPUs, custom resources)."""
    offer = mc.group_offer(group)
    assert offer["GPU"] == 0  # cpu-smoke: nothing needs a GPU
    return offer["CPU"], {k: v for k, v in offer.items() if k not in ("CPU", "GPU")}


def test_components_run_where_their_resources_say(tmp_path: Path) -> None:
    objs = mc.render(ROOT / "k8s" / "overlays" / "cpu-smoke")
    groups = {g["groupName"]: g for g in mc.raycluster(objs)["spec"]["workerGroupSpecs"]}
    cfg = mc.load_config(objs)
    with LocalRayCluster() as rc:
        rc.start_head(*node_resources(groups["rollout"]))
        rc.add_node(*node_resources(groups["inference"]))
        nodes = {n["node_id"]: n["resources_total"] for n in rc.list_nodes()}
        sid = f"epiq-multinode-{uuid.uuid4().hex[:8]}"
        # The overlay's Redis is a StatefulSet; here the driver starts its own valkey server.
        proc = rc.submit(sid, ROOT, train("configs/k8s-cpu-smoke.yaml", tmp_path, "redis.url=null"))
        job = rc.job(sid)
        actors = [a for a in rc.list_actors() if a["class_name"] in COMPONENTS and a["job_id"] == job["driver_info"]["id"]]
    assert proc.returncode == 0 and job["status"] == "SUCCEEDED", proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_run_folder(tmp_path / "r")
    assert len(nodes) == 2
    placed: dict[str, list[str]] = {section: [] for section in COMPONENTS.values()}
    for actor in actors:
        placed[COMPONENTS[actor["class_name"]]].append(actor["node_id"])
    assert {s: len(ids) for s, ids in placed.items()} == {"memory": cfg.memory.shards, "llm": cfg.llm.engines,
                                                           "rollout": cfg.rollout.actors}
    for section, node_ids in placed.items():
        asked = getattr(cfg, section).resources
        assert asked, f"{section}.resources is empty in the smoke config"
        for node_id in node_ids:  # the node it ran on offers what its section asks for
            assert all(nodes[node_id].get(k, 0) >= v for k, v in asked.items()), (section, asked, nodes[node_id])
    assert set(placed["llm"]).isdisjoint(placed["rollout"] + placed["memory"])  # two nodes really used
