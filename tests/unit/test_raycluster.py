"""The multi-node test harness (tests/raycluster.py): a worker whose `ray start` exits before registering is
started again, once, and a second exit or a dead head is raised. No Ray here: `ray start` is stood in for by
short-lived Python processes, and the dashboard's node list by a counter of live ones."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.raycluster import LocalRayCluster, NodeExited


def harness(monkeypatch, exits: list[bool]) -> LocalRayCluster:
    """A cluster whose head is a live process and whose next `ray start` calls exit (True) or stay up (False)."""
    rc = LocalRayCluster()
    plan = iter(exits)

    def start(label, args, num_cpus, resources):
        code = "import sys; sys.exit(3)" if next(plan) else "import time; time.sleep(60)"
        (rc.root / f"{label}.log").write_text("raylet: timed out waiting for node registration\n")
        rc.nodes.append(subprocess.Popen([sys.executable, "-c", code], start_new_session=True))
        if "exit" in code:
            rc.nodes[-1].wait()

    monkeypatch.setattr(rc, "_start", start)
    monkeypatch.setattr(rc, "list_nodes", lambda: [{"state": "ALIVE", "node_id": p.pid} for p in rc.nodes
                                                    if p.poll() is None])
    rc.nodes.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True))
    return rc


def test_a_worker_that_exits_before_registering_is_started_again(monkeypatch):
    rc = harness(monkeypatch, [True, False])
    try:
        rc.add_node(num_cpus=1, timeout=10)
        assert len(rc.nodes) == 2 and all(p.poll() is None for p in rc.nodes)
        assert (rc.root / "node1.failed-1.log").is_file(), "the failed start's log is kept"
    finally:
        rc.stop(timeout=5)


def test_a_second_exit_is_raised_with_the_nodes_log(monkeypatch):
    rc = harness(monkeypatch, [True, True])
    try:
        with pytest.raises(NodeExited, match="node registration"):
            rc.add_node(num_cpus=1, timeout=10)
        assert (rc.root / "node1.failed-1.log").is_file(), "raised on the second start, not the first"
    finally:
        rc.stop(timeout=5)


def test_a_dead_head_is_not_retried(monkeypatch):
    rc = harness(monkeypatch, [True, False])
    rc.nodes[0].kill()
    rc.nodes[0].wait()
    try:
        with pytest.raises(NodeExited, match="exited with code"):
            rc.add_node(num_cpus=1, timeout=10)
        assert len(rc.nodes) == 2 and not (rc.root / "node1.failed-1.log").exists(), "no second start after the head died"
    finally:
        rc.stop(timeout=5)
