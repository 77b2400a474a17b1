"""The sharded memory server on real Redis and real Ray: no lost or doubled reward, crashes, dead letters, rollback."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from cluster.config import MemoryConfig
from cluster.services import RedisServer
from cluster.wiring import start_shards
from memory_server import keys
from memory_server.client import MemoryClient
from memory_server.records import MemoryRecord, Provenance, RewardEvent, decode_reward_event, encode_reward_event
from memory_server.shard import MemoryShard
from memory_server.store import MemoryStore

DIM = 16
ALPHA = 0.3


def _records(n: int, ns: str, seed: int = 0) -> list[MemoryRecord]:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    prov = Provenance("ep-writer", "task-0", "test", "tiny", 0, "test", [])
    return [MemoryRecord(namespace=ns, intent=f"task {i}", embedding=vecs[i], experience=f"do {i}",
                         kind="success" if i % 2 else "failure", provenance=prov, id=f"m{i:04d}") for i in range(n)]


def _replay(client: redis.Redis, ns: str, shards: int) -> dict[str, tuple[float, int]]:
    """Q and visits of every memory, recomputed by replaying each shard's stream in order."""
    state: dict[str, tuple[float, int]] = {}
    seen: set[tuple[str, str]] = set()
    for s in range(shards):
        for _, fields in client.xrange(keys.reward_stream(ns, s)):
            ev = decode_reward_event(fields[b"e"])
            for m in ev.memory_ids:
                if (ev.episode_id, m) in seen:
                    continue
                seen.add((ev.episode_id, m))
                q, v = state.get(m, (0.0, 0))
                state[m] = (q + ALPHA * (ev.reward - q), v + 1)
    return state


def _wait_applied(client: redis.Redis, ns: str, shards: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        backlog = 0
        for s in range(shards):
            stream = keys.reward_stream(ns, s)
            groups = client.xinfo_groups(stream)
            backlog += sum(int(g["pending"]) + int(g.get("lag") or 0) for g in groups)
        if backlog == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"{backlog} events still unapplied")


def _assert_matches_replay(store: MemoryStore, client: redis.Redis, ns: str, shards: int, ids: list[str]) -> None:
    expected = _replay(client, ns, shards)
    for rec in store.get(ids):
        assert rec is not None
        q, visits = expected.get(rec.id, (0.0, 0))
        assert rec.visits == visits, rec.id
        assert rec.q == pytest.approx(q, abs=1e-12), rec.id


def _writer(client: MemoryClient, w: int, ids: list[str], n: int, rng_seed: int) -> None:
    rng = np.random.default_rng(rng_seed)
    for i in range(n // 2):
        chosen = list(rng.choice(ids, size=3, replace=False))
        reward = 1.0 if rng.random() < 0.5 else -1.0
        for _ in range(2):  # every episode's event is delivered twice: the second must have no effect
            client.feedback_blocking(f"w{w}-ep{i}", chosen, reward=reward)


@pytest.mark.slow
def test_concurrent_writers_and_a_killed_shard_lose_and_double_nothing(ray_session, redis_url: str) -> None:
    ray = ray_session
    ns, shards = "conc", 2
    cfg = MemoryConfig(namespace=ns, shards=shards, alpha=ALPHA, claim_idle_s=1.0, keep_reward_events=True)
    handles = start_shards(cfg, redis_url)
    rc = redis.Redis.from_url(redis_url)
    mem = MemoryClient(handles, redis_url, cfg)
    ids = mem.add_blocking(_records(40, ns))
    assert len(ids) == 40

    threads = [threading.Thread(target=_writer, args=(MemoryClient(handles, redis_url, cfg), w, ids, 1000, w))
               for w in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    pid = ray.get(handles[0].__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGKILL)  # mid-stream; Ray restarts it, it rebuilds from Redis and finishes its backlog
    for t in threads:
        t.join()
    _wait_applied(rc, ns, shards)

    store = MemoryStore(rc, ns, shards)
    _assert_matches_replay(store, rc, ns, shards, ids)
    total_visits = sum(r.visits for r in store.get(ids))
    assert total_visits == 8 * 500 * 3  # distinct (episode, memory) pairs: 500 episodes per writer, 3 memories each
    new_pid = ray.get(handles[0].__ray_call__.remote(lambda self: os.getpid()))
    assert new_pid != pid
    for h in handles:
        ray.kill(h, no_restart=True)


@pytest.mark.slow
def test_retrieval_answers_without_a_dead_shard(ray_session, redis_url: str) -> None:
    ray = ray_session
    cfg = MemoryConfig(namespace="partial", shards=2, k1=10, k2=3, delta=-1.0, shard_timeout_s=2.0)
    handles = start_shards(cfg, redis_url)
    mem = MemoryClient(handles, redis_url, cfg)
    records = _records(30, "partial")
    mem.add_blocking(records)
    full = mem.retrieve_blocking(records[0].embedding)
    assert full.missing_shards == [] and full.records[0].id == records[0].id and len(full.records) == 3
    ray.kill(handles[1], no_restart=True)
    part = mem.retrieve_blocking(records[0].embedding)
    assert part.missing_shards == [1]
    assert all(keys.shard_of(r.id, 2) == 0 for r in part.records) and part.records
    ray.kill(handles[0], no_restart=True)


def test_malformed_event_goes_to_dead_letter_and_the_shard_goes_on(redis_url: str) -> None:
    ns = "dl"
    shard = MemoryShard(redis_url, ns, 0, 1, alpha=ALPHA, consume=False, keep_events=True)
    shard.add(_records(2, ns))
    rc = redis.Redis.from_url(redis_url)
    stream = keys.reward_stream(ns, 0)
    rc.xadd(stream, {"e": b"\x93not msgpack of an event"})
    rc.xadd(stream, {"other": "field"})
    cfg = MemoryConfig(namespace=ns, shards=1, alpha=ALPHA)
    MemoryClient([shard], redis_url, cfg).feedback_blocking("ep-1", ["m0000"], 1.0)
    shard.drain()
    dead = rc.xrange(keys.dead_letter_stream(ns))
    assert len(dead) == 2 and all(b"reason" in f for _, f in dead)
    assert shard.get(["m0000"])[0].q == pytest.approx(ALPHA)
    assert shard.pending() == 0


def test_applied_reward_events_are_trimmed_and_pending_ones_kept(redis_url: str) -> None:
    """The reward stream does not grow without bound: what the shard applied goes, what it holds stays."""
    ns = "trim"
    rc = redis.Redis.from_url(redis_url)
    shard = MemoryShard(redis_url, ns, 0, 1, alpha=ALPHA, consume=False)
    shard.add(_records(2, ns))
    client = MemoryClient([shard], redis_url, MemoryConfig(namespace=ns, shards=1, alpha=ALPHA))
    for i in range(20):
        client.feedback_blocking(f"ep{i}", ["m0000"], 1.0)
    shard.drain()
    stream = keys.reward_stream(ns, 0)
    assert rc.xlen(stream) <= 1 and shard.stats["trimmed"] >= 19
    assert shard.get(["m0000"])[0].visits == 20
    client.feedback_blocking("late", ["m0001"], 1.0)
    rc.xreadgroup("shards", shard.consumer, {stream: ">"}, count=10)  # delivered, not applied (a crash)
    shard.reader.trim_acknowledged()
    again = MemoryShard(redis_url, ns, 0, 1, alpha=ALPHA, consume=False)
    again.drain()
    assert again.get(["m0001"])[0].visits == 1  # the pending event survived the trim and was applied


def test_restarted_shard_applies_its_unacknowledged_backlog(redis_url: str) -> None:
    ns = "backlog"
    rc = redis.Redis.from_url(redis_url)
    shard = MemoryShard(redis_url, ns, 0, 1, alpha=ALPHA, consume=False, keep_events=True)
    shard.add(_records(3, ns))
    cfg = MemoryConfig(namespace=ns, shards=1, alpha=ALPHA)
    for i in range(5):
        MemoryClient([shard], redis_url, cfg).feedback_blocking(f"ep{i}", ["m0000", "m0001"], 1.0)
    # Simulate a crash after reading, before applying: entries delivered but never acknowledged.
    rc.xreadgroup("shards", shard.consumer, {keys.reward_stream(ns, 0): ">"}, count=100)
    again = MemoryShard(redis_url, ns, 0, 1, alpha=ALPHA, consume=False, keep_events=True)
    again.drain()
    assert again.pending() == 0
    _assert_matches_replay(MemoryStore(rc, ns, 1), rc, ns, 1, ["m0000", "m0001", "m0002"])
    assert again.get(["m0000"])[0].visits == 5


def test_redis_restart_with_aof_keeps_every_acknowledged_event(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, durable=True, appendfsync="always").start()
    ns = "aof"
    try:
        shard = MemoryShard(server.url, ns, 0, 1, alpha=ALPHA, consume=False, keep_events=True)
        shard.add(_records(5, ns))
        cfg = MemoryConfig(namespace=ns, shards=1, alpha=ALPHA)
        client = MemoryClient([shard], server.url, cfg)
        for i in range(50):
            client.feedback_blocking(f"ep{i}", [f"m{i % 5:04d}"], 1.0 if i % 3 else -1.0)
        shard.drain()
        before = {r.id: (r.q, r.visits) for r in MemoryStore(shard.client, ns, 1).get([f"m{i:04d}" for i in range(5)])}
        server.kill()
        server = RedisServer(tmp_path, durable=True, port=server.port, password=server.password).start()
        rc = redis.Redis.from_url(server.url)
        after = {r.id: (r.q, r.visits) for r in MemoryStore(rc, ns, 1).get(list(before))}
        assert after == before
        reborn = MemoryShard(server.url, ns, 0, 1, alpha=ALPHA, consume=False, keep_events=True)
        assert reborn.drain() == 0  # nothing acknowledged is re-applied, nothing is pending
        assert {i: (r.q, r.visits) for i, r in zip(before, reborn.get(list(before)))} == before
    finally:
        server.stop()


def test_rollback_restores_the_snapshot_exactly(redis_url: str, tmp_path: Path) -> None:
    ns = "snap"
    rc = redis.Redis.from_url(redis_url)
    shard = MemoryShard(redis_url, ns, 0, 1, alpha=ALPHA, consume=False, keep_events=True)
    ids = shard.add(_records(6, ns))
    client = MemoryClient([shard], redis_url, MemoryConfig(namespace=ns, shards=1, alpha=ALPHA))
    client.feedback_blocking("ep-a", ids[:3], 1.0)
    shard.drain()
    store = MemoryStore(rc, ns, 1)
    snap = tmp_path / "mem.msgpack"
    store.snapshot(snap)
    before = store.get(ids)
    client.feedback_blocking("ep-b", ids, -1.0)
    shard.add(_records(9, ns, seed=1)[6:])
    shard.drain()
    assert store.get(ids) != before
    store.restore(snap)
    shard.rebuild()
    assert store.get(ids) == before
    assert shard.size() == 6


@pytest.mark.slow
def test_capacity_evicts_lowest_utility_from_store_and_shards(ray_session, redis_url: str) -> None:
    ray = ray_session
    ns = "cap"
    cfg = MemoryConfig(namespace=ns, shards=2, capacity=10, evict_age_weight=0.0, k1=20, k2=5, delta=-1.0)
    handles = start_shards(cfg, redis_url)
    mem = MemoryClient(handles, redis_url, cfg)
    records = _records(15, ns)
    for i, r in enumerate(records):
        r.q = i / 10  # m0000 .. m0004 have the lowest utility
    mem.add_blocking(records)
    evicted = mem.enforce_capacity_blocking()
    assert sorted(evicted) == [f"m{i:04d}" for i in range(5)]
    assert sum(ray.get([h.size.remote() for h in handles])) == 10
    got = mem.retrieve_blocking(records[0].embedding)
    assert not set(got.pool) & set(evicted)
    assert mem.stats()["count"] == 10
    for h in handles:
        ray.kill(h, no_restart=True)


def test_a_run_s_writes_keep_the_memory_within_capacity(ray_session, redis_url: str) -> None:
    """memory.capacity holds as episodes write memories (not only when something calls eviction)."""
    import asyncio

    ray = ray_session
    cfg = MemoryConfig(namespace="cap-run", shards=2, capacity=6, evict_age_weight=0.0)
    handles = start_shards(cfg, redis_url)
    vecs = {f"intent {i}": r.embedding for i, r in enumerate(_records(12, "cap-run"))}

    class Lookup:  # the embedding of each test intent (the client under test is the point, not the embedder)
        def encode(self, texts: list[str]):
            return [vecs[t] for t in texts]

    mem = MemoryClient(handles, redis_url, cfg, Lookup())

    async def write_all() -> None:
        for i in range(len(vecs)):
            await mem.write_episode(episode_id=f"ep{i}", intent=f"intent {i}", experience="x", won=i % 2 == 0, task_id="t",
                                    env="textworld", model_id="m", adapter_version=0, writer="w", retrieved_ids=[])

    asyncio.run(write_all())
    count = mem.stats()["count"]
    assert 0 < count <= cfg.capacity
    assert sum(ray.get([h.size.remote() for h in handles])) == count  # the shards forgot what was evicted
    for h in handles:
        ray.kill(h, no_restart=True)


def test_memory_cli_stats_snapshot_rollback_export_import(redis_url: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    ns = "cli"
    shard = MemoryShard(redis_url, ns, 0, 1, alpha=ALPHA, consume=False, keep_events=True)
    ids = shard.add(_records(4, ns))
    MemoryClient([shard], redis_url, MemoryConfig(namespace=ns, shards=1, alpha=ALPHA)).feedback_blocking("ep", ids[:2], 1.0)
    shard.drain()
    root = Path(__file__).resolve().parents[2]

    def epiq(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cluster.cli", "memory", *args], cwd=root, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "EPIQ_REDIS_URL": redis_url})

    res = epiq("stats", "--namespace", ns)
    assert res.returncode == 0, res.stderr
    assert "memories: 4" in res.stdout and "success: 2" in res.stdout and "Q histogram" in res.stdout
    snap = tmp_path / "m.msgpack"
    assert epiq("snapshot", "--namespace", ns, "--out", str(snap)).returncode == 0
    from_file = epiq("stats", "--file", str(snap))
    assert from_file.returncode == 0 and from_file.stdout == res.stdout
    top = epiq("top", "--namespace", ns, "-k", "1")
    assert top.stdout.startswith(ids[0][:12]) or top.stdout.startswith(ids[1][:12])
    MemoryClient([shard], redis_url, MemoryConfig(namespace=ns, shards=1, alpha=ALPHA)).feedback_blocking("ep2", ids, -1.0)
    shard.drain()
    assert epiq("stats", "--namespace", ns).stdout != res.stdout
    assert epiq("rollback", "--namespace", ns, "--in", str(snap)).returncode == 0
    assert epiq("stats", "--namespace", ns).stdout == res.stdout
    out = tmp_path / "m.jsonl"
    assert epiq("export", "--namespace", ns, "--out", str(out), "--with-embeddings").returncode == 0
    assert epiq("import", "--namespace", "cli2", "--in", str(out)).returncode == 0
    assert epiq("stats", "--namespace", "cli2").stdout == res.stdout
    bad = epiq("rollback", "--namespace", ns, "--in", str(tmp_path / "missing.msgpack"))
    assert bad.returncode == 2 and "epiq memory: error" in bad.stderr


@pytest.mark.slow
def test_index_settings_reach_the_shard_actors(ray_session, redis_url: str) -> None:
    """memory.hnsw_* shape the shard's HNSW graph, memory.scan_threads sets its BLAS threads, and a retrieval's
    own beam is used for that call only."""
    ray = ray_session
    cfg = MemoryConfig(namespace="knobs", shards=1, k1=5, k2=2, delta=-1.0, index="approx", hnsw_m=8,
                       hnsw_ef_construction=40, hnsw_ef_search=77, scan_threads=2)
    handles = start_shards(cfg, redis_url)
    records = _records(50, "knobs")
    mem = MemoryClient(handles, redis_url, cfg)
    mem.add_blocking(records)

    def settings(shard):
        from threadpoolctl import threadpool_info

        blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
        return shard.index.ef_search, shard.index._index.M, shard.index._index.ef_construction, blas

    ef, m, ef_construction, blas = ray.get(handles[0].__ray_call__.remote(settings))
    assert (ef, m, ef_construction) == (77, 8, 40)
    assert blas and all(n == 2 for n in blas)  # Ray alone would give this num_cpus=0.5 actor one thread
    got = mem.retrieve_blocking(records[3].embedding, ef=200)
    assert got.pool[0] == records[3].id and len(got.records) == 2
    assert ray.get(handles[0].__ray_call__.remote(lambda s: s.index.ef_search)) == 77  # the call's beam did not stick
    for h in handles:
        ray.kill(h, no_restart=True)


def test_an_add_in_flight_when_its_shard_dies_runs_again(ray_session, redis_url: str) -> None:
    """A shard killed during ``add``: the restarted shard runs the call again (shard methods are idempotent), so the
    episode's memory is written instead of the call failing with RayActorError."""
    ray = ray_session
    cfg = MemoryConfig(namespace="retry", shards=1)
    handles = start_shards(cfg, redis_url)
    records = _records(4000, "retry")  # an add long enough to kill the shard while it runs
    ref = handles[0].add.remote(records)
    time.sleep(0.3)
    ray.kill(handles[0], no_restart=False)  # dies like a crash: Ray restarts it
    ray.get(ref, timeout=120)
    assert ray.get(handles[0].size.remote()) == 4000
    assert MemoryStore(redis.Redis.from_url(redis_url), "retry", 1).count() == 4000
    ray.kill(handles[0], no_restart=True)


def test_a_reward_on_the_wrong_shard_s_stream_reaches_the_owner(redis_url: str) -> None:
    """An event for another shard's memory is forwarded to the owner's stream (not applied behind its back, which
    left the owner's in-memory Q stale until it restarted)."""
    ns = "route"
    rc = redis.Redis.from_url(redis_url)
    s0 = MemoryShard(redis_url, ns, 0, 2, alpha=ALPHA, consume=False)
    s1 = MemoryShard(redis_url, ns, 1, 2, alpha=ALPHA, consume=False)
    records = _records(6, ns)
    theirs = next(r.id for r in records if keys.shard_of(r.id, 2) == 1)
    s1.add([r for r in records if keys.shard_of(r.id, 2) == 1])
    s0.add([r for r in records if keys.shard_of(r.id, 2) == 0])
    ev = RewardEvent("ep-x", [theirs], 1.0, time.time(), 0, 0)
    rc.xadd(keys.reward_stream(ns, 0), {"e": encode_reward_event(ev)})  # on shard 0's stream by mistake
    s0.drain()
    s1.drain()
    assert s0.stats["forwarded"] == 1 and s1.stats["applied"] == 1
    live, stored = s1.get([theirs])[0], MemoryStore(rc, ns, 2).get([theirs])[0]
    assert live.q == stored.q == pytest.approx(ALPHA * 1.0) and live.visits == stored.visits == 1


def test_one_bad_record_does_not_stop_a_shard_from_starting(redis_url: str) -> None:
    """A corrupt stored record is dead-lettered on rebuild and the shard serves the others; an embedding that is not
    unit length is refused when it is written."""
    from memory_server.records import EmbeddingError

    ns = "bad-rec"
    rc = redis.Redis.from_url(redis_url)
    store = MemoryStore(rc, ns, 1)
    records = _records(3, ns)
    store.add(records)
    rc.hset(keys.record_key(ns, records[1].id), "visits", "not a number")  # corrupted behind the store's back
    shard = MemoryShard(redis_url, ns, 0, 1, alpha=ALPHA, consume=False)
    assert shard.size() == 2 and shard.stats["bad_records"] == 1
    dead = [f for _, f in rc.xrange(keys.dead_letter_stream(ns))]
    assert dead and dead[-1][b"record"] == records[1].id.encode()
    skewed = _records(1, ns, seed=9)[0]
    skewed.id, skewed.embedding = "m-skewed", skewed.embedding * 2
    with pytest.raises(EmbeddingError, match="norm"):
        store.add([skewed])
