"""benchmarks.learning's argument handling (no cluster): run seeds given as lists and ranges."""

import pytest

from benchmarks.learning import main, seed_list


def test_seed_list_takes_ranges_and_lists() -> None:
    assert seed_list("0-5") == [0, 1, 2, 3, 4, 5]
    assert seed_list("6,7,8") == [6, 7, 8]
    assert seed_list("0-2, 9") == [0, 1, 2, 9]
    assert seed_list("4") == [4]


@pytest.mark.parametrize("text", ["a", "3-1", "1,1", "0-2,2", "1-", ""])
def test_seed_list_rejects_bad_seeds(text: str) -> None:
    with pytest.raises(ValueError, match="--seeds"):
        seed_list(text)


def test_bad_seeds_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seeds", "6-x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["epiq bench learning: --seeds: '6-x' is not an integer or a range LO-HI"]
