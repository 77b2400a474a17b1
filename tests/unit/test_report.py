"""Mode configs, the comparison report (table, plot, JSON) and its CLI, on hand-written metrics."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from cluster.config import ConfigError, build
from cluster.job import mode_config, seed_config
from cluster.report import aggregate, expand, main, markdown


def test_mode_overrides_change_only_their_mode() -> None:
    cfg = build({"learner": {"replay": 16}, "run": {"mode_overrides": {"memory+lora": ["learner.replay=0",
                                                                                     "memory.alpha=0.5"]}}})
    both, lora = mode_config(cfg, "memory+lora"), mode_config(cfg, "lora")
    assert both.learner.replay == 0 and both.memory.alpha == 0.5 and both.learner.enabled and both.memory.enabled
    assert lora.learner.replay == 16 and mode_config(cfg, "memrl").memory.alpha == cfg.memory.alpha
    assert both.memory.namespace != mode_config(cfg, "memrl").memory.namespace  # the mode's own namespace still


def test_a_mode_override_is_checked_as_its_mode_runs() -> None:
    """An override valid for its own mode builds every other mode (the five-mode benchmark crashed at lora when
    memory+lora's learner.memory_guided=only was checked against lora's config), and one invalid for its own mode
    fails at load, not when the mode starts."""
    overrides = {"memory+lora": ["learner.memory_guided=only"]}
    for memory in (True, False):
        cfg = build({"memory": {"enabled": memory}, "run": {"modes": ["none", "lora", "memory+lora"],
                                                            "mode_overrides": overrides}})
        assert mode_config(cfg, "lora").learner.memory_guided == "train"
        assert mode_config(cfg, "memory+lora").learner.memory_guided == "only"
        assert mode_config(cfg, "none").learner.memory_guided == "train"
    with pytest.raises(ConfigError, match=re.escape("run.mode_overrides.lora: learner: learner.memory_guided: only "
                                                    "needs memory.enabled: true")):
        build({"memory": {"enabled": True}, "run": {"mode_overrides": {"lora": ["learner.memory_guided=only"]}}})


@pytest.mark.parametrize("overrides, message", [
    ({"memory+lora": ["learner.replay=-1"]}, "run.mode_overrides.memory+lora: learner.replay: must be >= 0"),
    ({"memory+lora": ["learner.replya=0"]}, "did you mean 'learner.replay'"),
    ({"memory+lora": ["llm.temperature=0"]}, "not a memory.* or learner.* key"),
    ({"lorra": ["learner.replay=0"]}, "unknown mode(s) ['lorra']"),
    ({"memrl": ["learner.enabled=true"]}, "learner.enabled is set by the mode itself"),
    ({"lora": "learner.replay=0"}, "expected list of str"),
])
def test_bad_mode_overrides_fail_at_load(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build({"run": {"mode_overrides": overrides}})


def _write_run(d: Path, per_seed: dict[int, list[tuple[float, float]]], heldout: list[float] | None = None) -> None:
    d.mkdir(parents=True)
    rows = [{"seed": s, "epoch": e, "success_rate": sr, "csr": c, "episodes_per_s": 2.0}
            for s, curve in per_seed.items() for e, (sr, c) in enumerate(curve)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if heldout is not None:
        (d / "heldout").mkdir()
        (d / "heldout" / "metrics.jsonl").write_text("".join(
            json.dumps({"seed": s, "epoch": 0, "success_rate": v, "csr": v, "episodes_per_s": 1.0}) + "\n"
            for s, v in enumerate(heldout)))


def test_modes_switch_memory_learner_and_lambda() -> None:
    cfg = build({"memory": {"lam": 0.5, "namespace": "qs"}})
    none, rag, memrl = mode_config(cfg, "none"), mode_config(cfg, "rag"), mode_config(cfg, "memrl")
    assert not none.memory.enabled and not none.learner.enabled
    assert rag.memory.enabled and rag.memory.lam == 0.0 and memrl.memory.lam == 0.5
    assert len({none.memory.namespace, rag.memory.namespace, memrl.memory.namespace}) == 3  # never shared
    floored = build({"memory": {"q_floor": 0.0}})
    assert mode_config(floored, "rag").memory.q_floor is None  # rag: Q neither ranks nor filters
    assert mode_config(floored, "memrl").memory.q_floor == 0.0
    lora, both = mode_config(cfg, "lora"), mode_config(cfg, "memory+lora")
    assert lora.learner.enabled and not lora.memory.enabled and both.learner.enabled and both.memory.enabled
    assert lora.llm.enable_lora and both.llm.enable_lora and not memrl.llm.enable_lora
    from memory_server.keys import check_namespace

    assert mode_config(cfg, "memory").memory.enabled and mode_config(cfg, "memory").memory.lam == 0.5
    for mode in ("none", "rag", "memrl", "memory", "lora", "memory+lora"):  # every mode's namespace is a valid Redis namespace
        check_namespace(seed_config(mode_config(cfg, mode), 0).memory.namespace)


def test_bad_modes_and_overlapping_heldout_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="run.modes: unknown mode"):
        build({"run": {"modes": ["none", "ragg"]}})
    with pytest.raises(ConfigError, match="env.heldout_seeds: must not overlap"):
        build({"env": {"task_seeds": [1, 2], "heldout_seeds": [2, 3]}})


def test_aggregate_intervals_over_seeds(tmp_path: Path) -> None:
    _write_run(tmp_path / "memrl", {0: [(0.2, 0.2), (0.6, 0.7)], 1: [(0.4, 0.4), (0.8, 0.9)]}, heldout=[0.1, 0.3])
    r = aggregate(tmp_path / "memrl")
    assert r["seeds"] == [0, 1] and r["epochs"] == [1, 2]
    # two seeds: mean 0.7, sd 0.141421, half width 12.7062 * 0.141421 / sqrt(2) = 1.27062
    assert r["success_mean"] == pytest.approx([0.3, 0.7])
    assert r["success_lo"][1] == pytest.approx(0.7 - 1.27062, abs=1e-4)
    assert r["last"]["mean"] == pytest.approx(0.7) and r["last"]["hi"] == pytest.approx(0.7 + 1.27062, abs=1e-4)
    assert r["csr"]["mean"] == pytest.approx(0.8) and r["heldout"]["mean"] == pytest.approx(0.2)
    assert r["per_seed"]["last"] == {0: 0.6, 1: 0.8}
    table = markdown({"memrl": r})
    assert "| memrl | 2 | 2 | - | 70.0% [-57.1, 197.1] | 80.0% [-47.1, 207.1] |" in table


def _write_episodes(d: Path, wins: dict[tuple[int, int], set[str]], tasks: list[str]) -> None:
    rows = [{"seed": s, "epoch": e, "task_id": t, "won": t in won} for (s, e), won in wins.items() for t in tasks]
    (d / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_forgetting_counts_tasks_won_before_and_lost_in_the_last_epoch(tmp_path: Path) -> None:
    from cluster.report import forgetting

    eps = [{"epoch": 0, "task_id": "a", "won": True}, {"epoch": 1, "task_id": "b", "won": True},
           {"epoch": 2, "task_id": "a", "won": False}, {"epoch": 2, "task_id": "b", "won": True},
           {"epoch": 2, "task_id": "c", "won": True}]
    assert forgetting(eps, 2) == pytest.approx(0.5)  # a and b won before; a not won in the last epoch
    assert math.isnan(forgetting(eps[2:], 2))  # nothing won before: undefined, left out of the mean


def test_paired_differences_and_verdicts_in_the_table(tmp_path: Path) -> None:
    """memrl beats none by 20 points on every seed (resolved); rag's difference to none straddles 0."""
    job = tmp_path / "job"
    tasks = ["a", "b"]
    for mode, last in (("none", [0.1, 0.3, 0.2]), ("rag", [0.2, 0.2, 0.3]), ("memrl", [0.3, 0.5, 0.4])):
        _write_run(job / mode, {s: [(0.0, 0.5), (v, 0.5)] for s, v in enumerate(last)})
        _write_episodes(job / mode, {(s, e): {"a"} for s in range(3) for e in range(2)}, tasks)
    (job / "config.yaml").write_text("run:\n  modes: [none, rag, memrl]\n")
    from cluster.report import compare, differences

    result = compare(expand([job]))
    diffs = {(d["a"], d["b"], d["metric"]): d for d in differences(result)}
    d = diffs[("memrl", "none", "last")]
    assert d["mean"] == pytest.approx(0.2) and d["resolved"] and d["n"] == 3
    assert not diffs[("rag", "none", "last")]["resolved"]
    assert ("memrl", "rag", "last") in diffs and result["memrl"]["forgetting"]["mean"] == pytest.approx(0.0)
    table = markdown(result)
    assert "| memrl - none | Last | +20.0% [+20.0, +20.0] | 3 | **memrl better** |" in table
    assert "| rag - none | Last |" in table and "not resolved" in table


def test_report_cli_expands_a_modes_folder_in_config_order(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    job = tmp_path / "job"
    for mode, v in (("none", 0.1), ("rag", 0.3), ("memrl", 0.5)):
        _write_run(job / mode, {0: [(v, v), (v, v)]})
    (job / "config.yaml").write_text("run:\n  modes: [none, rag, memrl]\n")
    assert list(expand([job])) == ["none", "rag", "memrl"]
    assert main([str(job)]) == 0
    out = capsys.readouterr().out
    assert out.index("| none") < out.index("| rag") < out.index("| memrl")
    assert "no interval (1 seed)" in out  # one seed: nothing is resolved
    assert (job / "comparison.png").stat().st_size > 1000
    doc = json.loads((job / "comparison.json").read_text())
    assert doc["runs"]["rag"]["last"]["mean"] == pytest.approx(0.3) and doc["runs"]["rag"]["last"]["lo"] is None
    assert main([str(tmp_path / "nothing-here")]) == 2


def test_admission_control_bounds_dispatch_by_learner_version() -> None:
    """AReaL admission: at most (version - start version + η + 1) x batch_size episodes dispatched."""
    from cluster.scheduler import Admission

    version = [3]
    admission = Admission(lambda: version[0], max_staleness=1, batch_size=4)
    assert admission.room() == 8  # (0 + 1 + 1) * 4
    admission.dispatched = 8
    assert admission.room() == 0 and admission.held_back == 1
    version[0] = 4  # the learner published one more version: one more batch may start
    assert admission.room() == 4
