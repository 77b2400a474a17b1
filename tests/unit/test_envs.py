"""Environments: the base step limit, TextWorld generation (deterministic, cached), play, intent, async stepping."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from actors.envs import AsyncEnv, Observation, StepResult, TaskSpec, TextEnv, make_env, task_set
from actors.envs.textworld_env import challenge_settings, game_path, generate_game
from cluster.config import EnvConfig


class CountingEnv(TextEnv):
    """No game: wins when told "win"; everything else is an observation."""

    name = "fake"

    def _reset(self, task: TaskSpec) -> Observation:
        return Observation(text="a room", admissible_actions=["win", "wait"], goal="win", intent="win")

    def _step(self, action: str) -> StepResult:
        won = action == "win"
        return StepResult(observation=f"you {action}", reward=float(won), done=won, won=won, admissible_actions=["win"])

    def close(self) -> None:
        pass


FAKE_TASK = TaskSpec(task_id="t", env="fake", split="train")
CFG = EnvConfig(name="textworld", challenge="tw-coin_collector", level=105, task_seed=1000, num_tasks=2, max_steps=20)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tw-cache")


@pytest.fixture(scope="module")
def task() -> TaskSpec:
    return task_set(CFG)[0]


def test_base_step_limit_ends_as_failure() -> None:
    env = CountingEnv(max_steps=3)
    env.reset(FAKE_TASK)
    results = [env.step("wait") for _ in range(3)]
    assert [r.done for r in results] == [False, False, True]
    assert not results[-1].won and results[-1].reward == 0.0 and results[-1].info == {"steps": 3, "truncated": True}
    with pytest.raises(RuntimeError, match="reset"):
        env.step("wait")
    env.reset(FAKE_TASK)  # a new episode starts from zero
    last = env.step("win")
    assert last.won and last.reward == 1.0 and last.info == {"steps": 1, "truncated": False}


def test_base_rejects_a_task_of_another_env() -> None:
    with pytest.raises(ValueError, match="alfworld"):
        CountingEnv(max_steps=3).reset(TaskSpec(task_id="x", env="alfworld", split="valid_seen"))


def test_task_set_and_settings() -> None:
    tasks = task_set(CFG)
    assert [t.seed for t in tasks] == [1000, 1001]
    assert tasks[0].task_id == "tw-coin_collector-105/1000" and tasks[0].env == "textworld"
    assert challenge_settings("tw-cooking", 1, "eval")["split"] == "valid"
    for bad in (("tw-nope", 1, "train"), ("tw-simple", 4, "train"), ("tw-coin_collector", 5, "valid_seen")):
        with pytest.raises(ValueError):
            challenge_settings(*bad)


def test_same_seed_same_game(cache: Path, task: TaskSpec, tmp_path: Path) -> None:
    first, second = generate_game(task, cache), generate_game(task, tmp_path)
    assert first == game_path(task, cache) and first.name == "1000.z8"
    assert generate_game(task, cache) == first  # cached: no second build
    meta = [json.loads(p.with_suffix(".json").read_text())["metadata"] for p in (first, second)]
    assert meta[0]["walkthrough"] == meta[1]["walkthrough"] and meta[0]["uuid"] == meta[1]["uuid"]
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # temp folders cleaned up


def test_walkthrough_wins(cache: Path, task: TaskSpec) -> None:
    env = make_env(CFG, cache)
    obs = env.reset(task)
    walkthrough = obs.info["walkthrough"]
    assert walkthrough and obs.admissible_actions and "look" in obs.admissible_actions
    results = [env.step(action) for action in walkthrough]
    assert all(not r.done and r.reward == 0.0 for r in results[:-1])
    assert results[-1].done and results[-1].won and results[-1].reward == 1.0
    env.close()


def test_inadmissible_actions_are_observations(cache: Path, task: TaskSpec) -> None:
    env = make_env(CFG, cache)
    obs = env.reset(task)
    for action in ("dance wildly", "take the moon", "", "quit", "restart", "go north. go south"):
        result = env.step(action)
        assert isinstance(result.observation, str) and result.observation
        assert not result.done and result.reward == 0.0 and result.admissible_actions
    assert "not a verb" in env.step("dance wildly").observation
    env.reset(task)  # meta commands did not break the game: the walkthrough still wins
    assert [env.step(a) for a in obs.info["walkthrough"]][-1].won
    env.close()


def test_step_limit_ends_textworld_episode_as_failure(cache: Path, task: TaskSpec) -> None:
    env = make_env(EnvConfig(challenge="tw-coin_collector", level=105, task_seed=1000, max_steps=3), cache)
    env.reset(task)
    results = [env.step("look") for _ in range(3)]
    assert [r.done for r in results] == [False, False, True]
    assert not results[-1].won and results[-1].reward == 0.0 and results[-1].info["truncated"]
    env.close()


def test_intent_has_no_walkthrough(cache: Path, task: TaskSpec) -> None:
    env = make_env(CFG, cache)
    obs = env.reset(task)
    objective = obs.info["objective"]
    assert "north" in objective or "south" in objective or "east" in objective or "west" in objective
    assert objective not in obs.intent and objective not in obs.text and objective not in obs.goal
    assert obs.goal == "Find the coin and take it." and obs.intent.startswith(obs.goal) and obs.text in obs.intent
    assert " ; ".join(obs.info["walkthrough"]) not in obs.intent
    env.close()


def test_async_env_runs_an_episode_off_the_event_loop(cache: Path, task: TaskSpec) -> None:
    async def episode() -> tuple[StepResult, int]:
        ticks = 0
        stop = asyncio.Event()

        async def heartbeat() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        beat = asyncio.create_task(heartbeat())
        executor = ThreadPoolExecutor(max_workers=CFG.workers)
        env = AsyncEnv(make_env(CFG, cache), executor)
        obs = await env.reset(task)
        for action in obs.info["walkthrough"]:
            result = await env.step(action)
        await env.close()
        stop.set()
        await beat
        executor.shutdown()
        return result, ticks

    result, ticks = asyncio.run(episode())
    assert result.done and result.won
    assert ticks > 1  # the loop kept running while the game was reset and stepped in the thread pool
