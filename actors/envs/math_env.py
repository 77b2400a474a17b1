"""GSM8K grade-school math word problems: one question, the reply's final number is graded against the gold answer.

Owns: ``load_problems`` (GSM8K's ``test.jsonl``: one {"question", "answer"} object a line, each worked answer ending
in ``#### <number>``), ``task_set`` and ``MathEnv``. The data is read in place from ``family_dir(cfg, "gsm8k")``
(``env.data_dir``, else ``$EPIQ_SHARED_DATA/gsm8k``, else ``../shared/data/gsm8k``). GSM8K's test split is the
only one shipped, so ``env.split`` 'test' and 'train' (the config's default) both read ``test.jsonl``.

Item ids are the 0-based line numbers as strings ("0" .. "1318"); task ids are ``gsm8k/<line>``. A step takes
the already-parsed number (``actors.replies.parse_number``; the env applies it again, so a whole reply also
works): correct -> won; wrong -> not done, so with ``max_steps: 1`` the agent has exactly one attempt and with more
it is told its answer was wrong (never the gold one) and may try again.

    env = MathEnv(cfg); obs = env.reset(task_set(cfg)[0]); env.step(parse_number(reply))
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from actors.config import EnvConfig
from actors.envs.base import Observation, StepResult, TaskSpec, TextEnv
from actors.envs.datasets import family_dir, pick_items
from actors.replies import normalize_number, numbers_equal, parse_number

SPLIT_FILES = {"test": "test.jsonl", "train": "test.jsonl"}  # GSM8K's test split is the one shipped


def problems_path(cfg: EnvConfig) -> Path:
    """The ``.jsonl`` file of ``cfg.split``; FileNotFoundError naming the path and how to point at the data."""
    if cfg.split not in SPLIT_FILES:
        raise ValueError(f"env.split: GSM8K splits are {sorted(SPLIT_FILES)} (both read test.jsonl), got {cfg.split!r}")
    path = family_dir(cfg, "gsm8k") / SPLIT_FILES[cfg.split]
    if not path.is_file():
        raise FileNotFoundError(f"env.data_dir: GSM8K file {path} does not exist (set env.data_dir to the folder "
                                f"holding test.jsonl, or $EPIQ_SHARED_DATA to the folder holding gsm8k/)")
    return path


def gold_answer(worked_answer: str) -> str:
    """The normalised number after the last '####' of a worked answer; "" when there is none."""
    _, sep, tail = worked_answer.rpartition("####")
    return normalize_number(tail.strip()) if sep else ""


def load_problems(path: str | Path) -> list[dict[str, str]]:
    """The problems of a GSM8K ``.jsonl`` file, in file order: {"question", "solution" (the worked answer),
    "answer" (its normalised final number)}; ValueError naming the file and the 1-based line of a malformed one."""
    return [dict(p) for p in _load(str(Path(path).resolve()))]


@functools.lru_cache(maxsize=4)
def _load(path: str) -> tuple[dict[str, str], ...]:
    problems = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question, solution = row["question"], row["answer"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}, line {number}: not a GSM8K problem ({e!r})") from e
            answer = gold_answer(str(solution))
            if not isinstance(question, str) or not question.strip() or not answer:
                raise ValueError(f"{path}, line {number}: needs a question and an answer ending in '#### <number>'")
            problems.append({"question": question.strip(), "solution": str(solution), "answer": answer})
    return tuple(problems)


def task_set(cfg: EnvConfig) -> list[TaskSpec]:
    """``env.items`` (line numbers), else ``num_tasks`` problems from line ``first_item``."""
    ids = [str(i) for i in range(len(_load(str(problems_path(cfg).resolve()))))]
    return [TaskSpec(task_id=f"gsm8k/{i}", env="math", split=cfg.split, item=i) for i in pick_items(cfg, ids)]


class MathEnv(TextEnv):
    """One GSM8K problem per episode; the action is the reply's final number."""

    name = "math"
    thread_safe = True
    one_line = False

    def __init__(self, cfg: EnvConfig) -> None:
        super().__init__(cfg.max_steps)
        self.cfg = cfg
        self._answer = ""

    def _reset(self, task: TaskSpec) -> Observation:
        problems = _load(str(problems_path(self.cfg).resolve()))
        if not task.item.isdigit() or int(task.item) >= len(problems):
            raise ValueError(f"task {task.task_id!r}: no GSM8K problem {task.item!r} (lines 0..{len(problems) - 1})")
        problem = problems[int(task.item)]
        self._answer = problem["answer"]
        question = problem["question"]
        return Observation(text=question, admissible_actions=[], goal=question, intent=question,
                           info={"answer": self._answer}, reply="number")

    def _step(self, action: str) -> StepResult:
        answer = parse_number(action)
        if numbers_equal(answer, self._answer):
            return StepResult("Correct.", 1.0, True, True, [], info={"parsed": answer})
        text = f"Your answer {answer} is not correct." if answer else "No final number was found in the reply."
        return StepResult(text, 0.0, False, False, [], info={"parsed": answer})

    def close(self) -> None:
        pass
