"""Agent helpers (prompt budget, action parsing, experience text) and run metrics (CSR, Recorder, resume)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from actors.agent import Trajectory
from actors.prompting import build_prompt, experience_text, parse_action, plan_line, script_of
from cluster.metrics import Recorder, csr


def test_parse_action_maps_to_an_admissible_command() -> None:
    adm = ["go north", "go south", "take coin"]
    assert parse_action("go north", adm) == "go north"
    assert parse_action("  Take Coin\nmore", adm) == "take coin"
    assert parse_action("go nor", adm) == "go north"
    assert parse_action("tkae coin", adm) == "take coin"
    assert parse_action("", adm) in adm
    assert parse_action("xyzzy", []) == "xyzzy"


def test_prompt_keeps_best_experiences_within_the_budget() -> None:
    count = lambda s: len(s.split())  # noqa: E731
    exps = ["a " * 10, "b " * 10, "c " * 10]
    full = build_prompt("full", "get the coin", "You are in a room.", ["go east"], exps, [], count, budget=1000)
    assert "Experience 3" in full
    tight = build_prompt("full", "get the coin", "You are in a room.", ["go east"], exps, [], count, budget=30)
    assert "Experience 1" in tight and "Experience 2" not in tight
    assert tight.rstrip().endswith(">") and "go east" in tight


def test_experience_text_success_script_and_failure_reflection() -> None:
    assert experience_text(True, ["go east", "take coin"], "find the coin.", "You win") == \
        "SUCCESS. To find the coin: go east ; take coin"
    fail = experience_text(False, ["go west"], "find the coin", "A dead end.")
    assert fail.startswith("FAILURE.") and "go west" in fail and "dead end" in fail


def test_script_round_trips_and_plan_marks_the_current_step() -> None:
    win = experience_text(True, ["go south", "go east", "take coin"], "Find the coin.", "You win")
    assert script_of(win) == ("SUCCESS", ["go south", "go east", "take coin"])
    assert plan_line(win, 0) == "memory: >> go south ; go east ; take coin ; end"
    assert plan_line(win, 2) == "memory: go south ; go east ; >> take coin ; end"
    assert plan_line(win, 9) == "memory: go south ; go east ; take coin ; >> end"
    fail = experience_text(False, ["go west", "go north"], "Find the coin.", "A dead end.", lesson="try east\nfirst")
    assert fail.endswith("Lesson: try east first")
    assert script_of(fail) == ("FAILURE", ["go west", "go north"])
    assert plan_line(fail, 1) == "memory: failed go west ; >> go north ; end"
    assert plan_line(None, 0) == plan_line("some free text", 0) == "memory: none"
    prompt = build_prompt("plan", "Find the coin.", "You are in a kitchen. " + "word " * 40, ["go east", "go west"],
                          [win], [], len, budget=10, step=1)
    assert prompt.splitlines() == ["memory: go south ; >> go east ; take coin ; end",
                                   "room: You are in a kitchen. " + " ".join(["word"] * 11),
                                   "actions: go east | go west", ">"]


def test_csr_is_cumulative() -> None:
    assert csr([{"a"}, set(), {"b"}, {"a", "c"}], 4) == [0.25, 0.25, 0.5, 0.75]


def _traj(task: str, epoch: int, won: bool, seed: int = 0, sample: int = 0) -> Trajectory:
    return Trajectory(f"s{seed}-e{epoch}-{task}-g{sample}", task, epoch, seed, sample, won=won, steps=3, generated_tokens=10,
                      retrieved_ids=["m"] if epoch else [], timings={"total": 0.1})


def test_recorder_closes_epochs_and_resumes_from_the_folder(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, ["a", "b"], epochs=2, progress=io.StringIO(), tensorboard=False)
    rec.record(_traj("a", 0, True))
    rec.record(_traj("a", 0, False))  # a duplicate result (re-dispatch) is ignored
    rec.record(_traj("b", 0, False))
    rec.record(_traj("a", 1, False))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["success_rate"] == 0.5 and rows[0]["csr"] == 0.5
    again = Recorder(tmp_path, ["a", "b"], epochs=2, progress=None, tensorboard=False)
    assert again.finished(0) == {(0, "a", 0), (0, "b", 0), (1, "a", 0)}
    again.record(_traj("b", 1, True))
    s = again.summary()
    assert s["last"] == 0.5 and s["csr"] == 1.0 and s["seeds"][0]["epochs"] == 2


def test_recorder_with_groups_closes_an_epoch_on_every_sample_of_every_task(tmp_path: Path) -> None:
    """rollout.group_size = 2: an epoch is 2 episodes per task; success is over episodes, CSR over tasks."""
    rec = Recorder(tmp_path, ["a", "b"], epochs=1, progress=io.StringIO(), tensorboard=False, group_size=2)
    rec.record(_traj("a", 0, True, sample=0))
    rec.record(_traj("a", 0, False, sample=1))
    rec.record(_traj("b", 0, False, sample=0))
    assert not (tmp_path / "metrics.jsonl").exists()  # b's second sample is missing
    rec.record(_traj("b", 0, False, sample=0))  # a duplicate of b's first sample changes nothing
    assert not (tmp_path / "metrics.jsonl").exists()
    rec.record(_traj("b", 0, False, sample=1))
    (row,) = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row["episodes"] == 4 and row["success_rate"] == 0.25 and row["csr"] == 0.5 and row["solved"] == ["a"]
    again = Recorder(tmp_path, ["a", "b"], epochs=1, progress=None, tensorboard=False, group_size=2)
    assert again.finished(0) == {(0, "a", 0), (0, "a", 1), (0, "b", 0), (0, "b", 1)}


def test_episode_ids_of_a_group_are_distinct_and_deterministic() -> None:
    from actors.agent import EpisodeSpec
    from actors.envs.base import TaskSpec

    task = TaskSpec("textworld/1023", "textworld", "train")
    ids = [EpisodeSpec(task, 2, 1, run_id="r", sample=g).episode_id for g in range(3)]
    assert ids == ["r/s1-e2-textworld/1023", "r/s1-e2-textworld/1023-g1", "r/s1-e2-textworld/1023-g2"]


def test_scheduler_dispatches_a_group_together_and_the_next_epoch_after_it() -> None:
    from collections import deque

    from actors.agent import EpisodeSpec
    from actors.envs.base import TaskSpec
    from cluster.scheduler import _next_free

    a, b = TaskSpec("a", "textworld", "train"), TaskSpec("b", "textworld", "train")
    queue = deque(EpisodeSpec(t, e, 0, sample=g) for e in range(2) for t in (a, b) for g in range(2))
    busy: dict[str, int] = {}
    taken = []
    while (spec := _next_free(queue, busy)) is not None:
        busy[spec.task.task_id] = spec.epoch
        taken.append((spec.task.task_id, spec.epoch, spec.sample))
    assert taken == [("a", 0, 0), ("a", 0, 1), ("b", 0, 0), ("b", 0, 1)]  # epoch 1 waits for epoch 0's groups
    del busy["a"]  # a's group came back
    assert (s := _next_free(queue, busy)) is not None and (s.task.task_id, s.epoch) == ("a", 1)


def test_timer_sums_named_phases() -> None:
    import time

    from common.timer import Timer

    timer = Timer("env", "llm")
    for _ in range(2):
        with timer("llm"):
            time.sleep(0.01)
    d = timer.as_dict()
    assert d["env"] == 0.0 and d["llm"] >= 0.02 and set(d) == {"env", "llm"}


def test_progress_off_a_terminal_is_plain_lines(tmp_path: Path) -> None:
    """Redirected to a file, the progress line never writes carriage returns (the log stays readable)."""
    out = io.StringIO()  # not a terminal
    rec = Recorder(tmp_path, ["a", "b"], 1, progress=out, tensorboard=False)
    for task in ("a", "b"):
        rec.record(_traj(task, 0, True))
    rec.close()
    text = out.getvalue()
    assert "\r" not in text and "epoch 1 (seed 0)" in text


def test_resume_after_a_hard_kill_mid_append(tmp_path: Path) -> None:
    """A driver killed while appending leaves half a line: resume drops it (that episode runs again) and appends
    continue on a clean line; a damaged line in the middle is an error naming the file and line."""
    from cluster.metrics import RunFileError

    rec = Recorder(tmp_path, ["a", "b"], epochs=2, progress=None, tensorboard=False)
    rec.record(_traj("a", 0, True))
    rec.close()
    with (tmp_path / "episodes.jsonl").open("a") as f:
        f.write('{"episode_id": "s0-e0-b-g0", "task_id": "b", "ep')  # the kill
    again = Recorder(tmp_path, ["a", "b"], epochs=2, progress=None, tensorboard=False)
    assert again.finished(0) == {(0, "a", 0)}
    again.record(_traj("b", 0, False))
    lines = (tmp_path / "episodes.jsonl").read_text().splitlines()
    assert [json.loads(x)["task_id"] for x in lines] == ["a", "b"]
    (tmp_path / "episodes.jsonl").write_text(lines[0] + "\nnot json\n" + lines[1] + "\n")
    with pytest.raises(RunFileError, match=r"episodes.jsonl:2"):
        Recorder(tmp_path, ["a", "b"], epochs=2, progress=None, tensorboard=False)
