"""benchmarks.pooled: per-seed differences of several runs pooled by (task set, seed), duplicates refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.pooled import main, pool, pooled_differences, task_set_id


def comparison(last_none: dict[str, float], last_lora: dict[str, float]) -> dict:
    return {"runs": {"none": {"per_seed": {"last": last_none}}, "lora": {"per_seed": {"last": last_lora}}},
            "differences": []}


def test_pooled_difference_is_over_every_task_set_and_seed() -> None:
    a = comparison({"0": 0.10, "1": 0.20}, {"0": 0.30, "1": 0.30})  # differences 0.2, 0.1
    b = comparison({"10": 0.10, "11": 0.10}, {"10": 0.40, "11": 0.10})  # differences 0.3, 0.0
    diffs = pooled_differences(pool([("a", "setA", a), ("b", "setB", b)]), ("last",))
    (d,) = [x for x in diffs if (x["a"], x["b"]) == ("lora", "none")]
    # differences 0.2, 0.1, 0.3, 0.0: mean 0.15, sd = sqrt(0.05 / 3), t(0.975, 3) = 3.182446
    half = 3.182446 * math.sqrt(0.05 / 3) / 2
    assert d["n"] == 4 and d["mean"] == pytest.approx(0.15)
    assert d["lo"] == pytest.approx(0.15 - half, abs=1e-5) and d["hi"] == pytest.approx(0.15 + half, abs=1e-5)
    assert not d["resolved"]


def test_the_same_seed_of_one_task_set_in_two_runs_is_refused() -> None:
    a = comparison({"0": 0.1}, {"0": 0.2})
    with pytest.raises(ValueError, match="seed 0 of task set setA"):
        pool([("a.json", "setA", a), ("b.json", "setA", a)])
    assert len(pool([("a.json", "setA", a), ("b.json", "setB", a)])["none"]["last"]) == 2  # other games: fine


def test_main_names_the_task_set_by_its_games(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = []
    for name, games, seeds in (("q", [3, 1, 2], ("0", "1")), ("a", [7, 8], ("0", "1")), ("q2", [1, 2, 3], ("0",))):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text(f"env:\n  task_seeds: {games}\n")
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps({"run_dir": str(run), "comparison": comparison(
            {s: 0.1 for s in seeds}, {s: 0.2 + 0.1 * int(s) for s in seeds})}))
        files.append(f)
    assert task_set_id(tmp_path / "q") == task_set_id(tmp_path / "q2") != task_set_id(tmp_path / "a")
    assert main([str(files[0]), str(files[1]), "--metrics", "last"]) == 0
    row = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("| lora - none"))
    assert "| 4 |" in row  # 2 seeds x 2 task sets
    assert main([str(files[0]), str(files[2])]) == 2  # seed 0 of the same games twice
    assert "counted twice" in capsys.readouterr().err


def test_a_result_with_its_games_pools_without_its_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A result file kept apart from its run folder (benchmarks/results/) is paired by the games it records."""
    files = []
    for name, games in (("q", [3, 1, 2]), ("a", [7, 8])):
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps({"run_dir": str(tmp_path / "gone" / name), "task_seeds": games,
                                 "comparison": comparison({"0": 0.1, "1": 0.1}, {"0": 0.2, "1": 0.3})}))
        files.append(f)
    assert main([str(f) for f in files] + ["--metrics", "last"]) == 0
    row = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("| lora - none"))
    assert "| 4 |" in row
    same = tmp_path / "q-again.json"
    same.write_text(json.dumps({"run_dir": "gone", "task_seeds": [1, 2, 3],
                                "comparison": comparison({"0": 0.1}, {"0": 0.2})}))
    assert main([str(files[0]), str(same)]) == 2  # the same games in another order: one task set
    assert "counted twice" in capsys.readouterr().err
