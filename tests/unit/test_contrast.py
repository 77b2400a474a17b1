"""benchmarks.contrast on hand-made result files: a mode of some runs against a mode of others, paired by seed."""

import json
from pathlib import Path

import pytest

from benchmarks.contrast import contrast, main, side


def _result(path: Path, games: list[int], per_mode: dict[str, dict[str, float]]) -> Path:
    runs = {mode: {"per_seed": {"last": {str(s): v for s, v in seeds.items()}}} for mode, seeds in per_mode.items()}
    path.write_text(json.dumps({"task_seeds": games, "comparison": {"runs": runs, "differences": []}}))
    return path


def test_contrast_pairs_the_same_games_and_seeds_across_files(tmp_path: Path) -> None:
    a1 = _result(tmp_path / "a1.json", [1, 2], {"memory+lora": {0: 0.5, 1: 0.6}})
    a2 = _result(tmp_path / "a2.json", [3, 4], {"memory+lora": {0: 0.7}})
    b1 = _result(tmp_path / "b1.json", [2, 1], {"memory+lora": {0: 0.4, 1: 0.4, 2: 0.9}, "memrl": {0: 0.0}})
    b2 = _result(tmp_path / "b2.json", [3, 4], {"memory+lora": {0: 0.5}})
    d = contrast(side("memory+lora", [a1, a2]), side("memory+lora", [b1, b2]), "a", "b")
    assert [x["metric"] for x in d] == ["last"]
    # pairs: games {1,2} seeds 0 and 1 (+0.1, +0.2), games {3,4} seed 0 (+0.2); b1's seed 2 has no partner
    assert d[0]["n"] == 3 and d[0]["mean"] == pytest.approx((0.1 + 0.2 + 0.2) / 3)


def test_contrast_errors_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _result(tmp_path / "a.json", [1], {"memrl": {0: 0.5}})
    b = _result(tmp_path / "b.json", [9], {"memrl": {0: 0.5}})
    assert main(["--a", "lora", str(a), "--b", "memrl", str(b)]) == 2
    assert "no mode 'lora'" in capsys.readouterr().err
    assert main(["--a", "memrl", str(a), "--b", "memrl", str(b)]) == 2  # other games: nothing to pair
    assert "share no (task set, seed) pair" in capsys.readouterr().err
    assert main(["--a", "memrl", "--b", "memrl", str(b)]) == 2
