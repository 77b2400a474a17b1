"""ALFWorld on the shared game files: the task list of each split, a game resets, steps, and its walkthrough wins.

The archive comes from ``$EPIQ_SHARED_DATA`` or ``<repo>/../shared/data`` and is unpacked once into
``<repo>/.cache/alfworld`` (gitignored).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.envs import AsyncEnv, make_env, task_set
from actors.envs.alfworld_env import ARCHIVE, shared_data_dir
from cluster.config import EnvConfig

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def shared_archive(monkeypatch: pytest.MonkeyPatch) -> Path:
    archive = shared_data_dir() / ARCHIVE
    if not archive.is_file() and not (CACHE / "alfworld").is_dir():
        pytest.skip(f"ALFWorld game files not found: {archive} (set EPIQ_SHARED_DATA to the shared data folder)")
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)  # read the shared copy, not a user's own folder
    return archive


def cfg(split: str = "valid_seen", **kw: object) -> EnvConfig:
    return EnvConfig(name="alfworld", split=split, **{"num_tasks": 5, "max_steps": 30, **kw})  # type: ignore[arg-type]


def test_task_sets_of_the_splits() -> None:
    assert len(task_set(cfg(num_tasks=140), CACHE)) == 140
    assert len(task_set(cfg("valid_unseen", num_tasks=134), CACHE)) == 134
    tasks = task_set(cfg("valid_train", num_tasks=5, task_seed=7), CACHE)
    assert tasks == task_set(cfg("valid_train", num_tasks=5, task_seed=7), CACHE)  # reproducible draw
    assert len({t.task_id for t in tasks}) == 5 and all(t.task_id.startswith("valid_train/") for t in tasks)
    with pytest.raises(ValueError, match="141"):
        task_set(cfg(num_tasks=141), CACHE)
    with pytest.raises(ValueError, match="valid_seen"):
        task_set(cfg("train"), CACHE)


def test_valid_seen_game_resets_steps_and_walkthrough_wins() -> None:
    task = task_set(cfg(num_tasks=140), CACHE)[0]
    env = make_env(cfg(), CACHE)
    obs = env.reset(task)
    assert obs.goal and obs.intent == f"Your task is to: {obs.goal}" and obs.goal in obs.text
    assert obs.admissible_actions and obs.info["walkthrough"]
    for action in obs.admissible_actions[:3]:
        result = env.step(action)
        assert result.observation and result.admissible_actions
    nonsense = env.step("fly to the moon")
    assert nonsense.observation == "Nothing happens." and not nonsense.done

    obs = env.reset(task)  # the same game again, from its start
    results = [env.step(action) for action in obs.info["walkthrough"]]
    assert results[-1].done and results[-1].won and results[-1].reward == 1.0
    assert not any(r.done for r in results[:-1])
    env.close()


def test_step_limit_and_async_episode() -> None:
    import asyncio

    tasks = task_set(cfg(), CACHE)

    async def episode() -> list[bool]:
        env = AsyncEnv(make_env(cfg(max_steps=2), CACHE))
        await env.reset(tasks[1])
        done = [(await env.step("look")).done for _ in range(2)]
        await env.close()
        return done

    assert asyncio.run(episode()) == [False, True]


def test_closed_backends_are_reused_and_the_process_exits_cleanly() -> None:
    """Envs that overlap and close in any order (as concurrent episodes do) reuse the loaded PDDL backends, every
    reused one plays its new game to a win, and the process exits 0 (unloading one of several loaded planner
    libraries used to make the interpreter segfault at exit)."""
    import subprocess
    import sys

    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from actors.envs import make_env, task_set
from actors.envs import alfworld_env
from cluster.config import EnvConfig
cfg = EnvConfig(name="alfworld", split="valid_seen", num_tasks=5, max_steps=60)
tasks = task_set(cfg, {str(CACHE)!r})
first, second = make_env(cfg, {str(CACHE)!r}), make_env(cfg, {str(CACHE)!r})
first.reset(tasks[0]); second.reset(tasks[1])
second.close()  # closed while the first is still open
backend = alfworld_env._IDLE_GAMES[-1]
third = make_env(cfg, {str(CACHE)!r})
obs = third.reset(tasks[2])
assert third._game is backend and not alfworld_env._IDLE_GAMES
results = [third.step(a) for a in obs.info["walkthrough"]]
assert results[-1].won, results[-1]
first.close(); third.close()
assert len(alfworld_env._IDLE_GAMES) == 2
print("clean")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("clean")
