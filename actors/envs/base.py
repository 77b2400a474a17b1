"""One interface for text environments: tasks, observations, step results, the step limit, async stepping.

Owns: ``TaskSpec`` (what identifies one task reproducibly), ``Observation`` (what ``reset`` returns, with the
``intent`` text used for memory retrieval), ``StepResult``, the abstract ``TextEnv`` (the base enforces
``max_steps``: reaching it ends the episode as a failure) and ``AsyncEnv`` (reset/step in a thread pool so an
environment never blocks the event loop). The factories that pick an implementation are in ``factory.py``.

    tasks = task_set(cfg.env, cache_dir)                      # actors.envs.task_set: num_tasks tasks from task_seed
    env = AsyncEnv(make_env(cfg.env, cache_dir), executor)    # actors.envs.make_env
    obs = await env.reset(tasks[0]); result = await env.step(obs.admissible_actions[0])
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from abc import ABC, abstractmethod
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class TaskSpec:
    """One task, reproducibly: TextWorld = (challenge, level, split, seed); ALFWorld = (split, game_file);
    code / sql / math = (split, item)."""

    task_id: str  # unique within an env family, e.g. "tw-coin_collector-105/1000" or "valid_seen/<task>/<trial>"
    env: str  # "textworld" | "alfworld"
    split: str
    seed: int = 0  # TextWorld: generator seed; ALFWorld: unused (0)
    challenge: str = ""  # TextWorld challenge, e.g. "tw-coin_collector"
    level: int = 0  # TextWorld challenge level
    game_file: str = ""  # ALFWorld: game.tw-pddl path relative to the data folder
    item: str = ""  # code / sql / math: the dataset item's id (HumanEval task id, LLB sample index, GSM8K line)


@dataclass
class Observation:
    """What ``reset`` returns."""

    text: str  # the first observation shown to the agent (no walkthrough, no route-spelling objective)
    admissible_actions: list[str]
    goal: str  # the task as the agent is told it
    intent: str  # text used for memory retrieval: the goal plus context, never the solution
    info: dict[str, Any] = field(default_factory=dict)  # e.g. walkthrough, objective, game_file
    reply: str = "command"  # how a reply is parsed (actors.replies): 'command' | 'code' | 'sql' | 'number'


@dataclass
class StepResult:
    """What ``step`` returns; ``reward`` is 1.0 when won, else 0.0."""

    observation: str
    reward: float
    done: bool
    won: bool
    admissible_actions: list[str]
    info: dict[str, Any] = field(default_factory=dict)  # steps, truncated, lost


# TextWorld (and ALFWorld, built on it) parse game logic with a module-global tatsu parser that breaks when two
# threads use it at once ("IndexError: pop from empty list" in tatsu's rule stack). Calls of such libraries are
# serialised per process; they take milliseconds, next to the model's tens of milliseconds per action.
_LIBRARY_LOCK = threading.RLock()


class TextEnv(ABC):
    """A text game. Subclasses implement ``_reset``/``_step``/``close``; the base counts steps.

    An action that is not admissible is an ordinary step: the game answers it ("That's not a verb I
    recognise.", "Nothing happens."). Reaching ``max_steps`` without winning ends the episode as a failure.
    ``thread_safe = False`` (the default) serialises the subclass's calls across threads of the process.
    """

    name = "base"
    thread_safe = False
    one_line = True  # actions are collapsed to one line (game parsers); code / SQL / math keep their newlines

    def _locked(self) -> Any:
        return contextlib.nullcontext() if self.thread_safe else _LIBRARY_LOCK

    def __init__(self, max_steps: int) -> None:
        if max_steps <= 0:
            raise ValueError(f"max_steps must be > 0, got {max_steps}")
        self.max_steps = max_steps
        self.steps = 0
        self.done = True
        self.task: TaskSpec | None = None

    def reset(self, task: TaskSpec) -> Observation:
        if task.env != self.name:
            raise ValueError(f"task {task.task_id!r} is for env {task.env!r}, this env is {self.name!r}")
        with self._locked():
            obs = self._reset(task)
        self.task, self.steps, self.done = task, 0, False
        return obs

    def step(self, action: str) -> StepResult:
        if self.done:
            raise RuntimeError("step() after the episode ended; call reset(task) first")
        with self._locked():
            result = self._step(" ".join(str(action).split()) if self.one_line else str(action))
        self.steps += 1
        truncated = not result.done and self.steps >= self.max_steps
        if truncated:
            result.done, result.won, result.reward = True, False, 0.0
        result.info.update(steps=self.steps, truncated=truncated)
        self.done = result.done
        return result

    @abstractmethod
    def _reset(self, task: TaskSpec) -> Observation: ...

    @abstractmethod
    def _step(self, action: str) -> StepResult: ...

    @abstractmethod
    def close(self) -> None: ...


class AsyncEnv:
    """Runs a ``TextEnv``'s blocking calls in an executor (default: asyncio's thread pool).

    One episode at a time per instance: await each call before the next.
    """

    def __init__(self, env: TextEnv, executor: Executor | None = None) -> None:
        self.env = env
        self.executor = executor

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))

    async def reset(self, task: TaskSpec) -> Observation:
        return await self._run(self.env.reset, task)

    async def step(self, action: str) -> StepResult:
        return await self._run(self.env.step, action)

    async def close(self) -> None:
        await self._run(self._close)

    def _close(self) -> None:
        with self.env._locked():
            self.env.close()

