"""The memory client/router that rollout actors call: scatter retrievals to shards, merge, Phase B; add; feedback.

Owns: embedding the query (cached per text: a task's intent is embedded once), calling every shard's Phase A in
parallel with a deadline, merging the global top-k1 by similarity, Phase B over the merged pool
(``scoring.phase_b``), routing new memories to their shard, and sending reward events to the per-shard Redis
streams (durable the moment XADD returns, so a shard that is down applies them when it is back).
The API is async (``retrieve``, ``add``, ``feedback``, ``write_episode``: the ``MemoryAPI`` of
``actors.contracts``); ``*_blocking`` helpers run the same calls for synchronous callers (CLI, benchmarks, tests).
The driver makes the shard actors (``cluster.wiring.start_shards``).

    mem = MemoryClient(shards, redis_url, cfg.memory, embedder)
    got = await mem.retrieve("put a clean mug in the coffee machine")  # Retrieval(records, scores, ...)
    await mem.feedback("episode-17", got.ids, reward=1.0)
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack
import numpy as np

from common.redis_conn import connect, retry_idempotent
from memory_server.config import MemoryConfig
from memory_server import keys, scoring
from memory_server.records import MemoryRecord, Provenance, RewardEvent, check_embedding, encode_reward_event


@dataclass
class Retrieval:
    """What one retrieval injected: records best first, their Phase B scores and similarities."""

    id: str
    records: list[MemoryRecord]
    scores: list[float]
    sims: list[float]
    pool: list[str]  # ids of the merged Phase A pool (top-k1 by similarity), best first
    missing_shards: list[int] = field(default_factory=list)  # shards that did not answer in time
    memory_version: int = 0  # the namespace's write counter when the retrieval ran

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]


def merge_candidates(per_shard: Sequence[Sequence[tuple[float, MemoryRecord]]], k1: int) -> list[tuple[float, MemoryRecord]]:
    """The global top-k1 by similarity over every shard's Phase A answer."""
    pool = [c for answer in per_shard for c in answer]
    pool.sort(key=lambda c: -c[0])
    return pool[:k1]


def select(pool: list[tuple[float, MemoryRecord]], *, lam: float, k2: int, q_floor: float | None,
           epsilon: float, q_clip: float, rng: np.random.Generator | None,
           own_success_sim: float | None = None) -> tuple[list[MemoryRecord], list[float], list[float]]:
    """Phase B over the merged pool: returns (records, scores, sims) best first.

    With ``own_success_sim`` set, a success memory at cosine >= it to the query (the query's own task) passes the
    Q floor whatever its Q: other tasks' failures with it hide it from them, not from the task that wrote it.
    """
    if not pool:
        return [], [], []
    sims = np.array([s for s, _ in pool], dtype=np.float64)
    qs = np.array([r.q for _, r in pool], dtype=np.float64)
    keep = None
    if own_success_sim is not None:
        keep = np.array([s >= own_success_sim and r.kind == "success" for s, r in pool], dtype=bool)
    idx, scores = scoring.phase_b(sims, qs, lam, k2, q_floor=q_floor, epsilon=epsilon, rng=rng, q_clip=q_clip,
                                  keep=keep)
    return [pool[i][1] for i in idx], [float(s) for s in scores], [float(sims[i]) for i in idx]


def by_shard(items: Iterable[Any], shards: int, key: Callable[[Any], str] = str) -> dict[int, list[Any]]:
    """``items`` grouped by the shard that owns ``key(item)`` (a memory id), order kept within each shard."""
    out: dict[int, list[Any]] = defaultdict(list)
    for item in items:
        out[keys.shard_of(key(item), shards)].append(item)
    return dict(out)


EMBED_CACHE = 4096  # texts whose embeddings a client keeps
EVICT_TO = 0.95  # past memory.capacity, a run's writes evict down to this share of it
T = TypeVar("T")


class MemoryClient:
    """Retrieval, writes and reward events against a set of shard actors (Ray handles)."""

    def __init__(self, shards: Sequence[Any], redis_url: str, cfg: MemoryConfig, embedder: Any = None,
                 seed: int | None = None) -> None:
        self.shards, self.cfg, self.embedder = list(shards), cfg, embedder
        self.redis = connect(redis_url)
        self.rng = np.random.default_rng(seed)
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()  # text -> embedding, least recently used first
        self._vectors_lock = threading.Lock()  # embed runs in worker threads (asyncio.to_thread)
        self._loop: asyncio.AbstractEventLoop | None = None  # the blocking helpers' event loop
        self._evicting = asyncio.Lock()  # capacity enforcement after writes, one at a time

    def embed(self, query: str | np.ndarray) -> np.ndarray:
        """The query's embedding; texts are cached (``EMBED_CACHE`` most recent): a task's intent is embedded once
        for all its retrievals and writes, not twice per episode."""
        if not isinstance(query, str):
            return check_embedding(query)
        if self.embedder is None:
            raise ValueError("this MemoryClient has no embedder: pass vectors, or give it one")
        with self._vectors_lock:
            vec = self._vectors.get(query)
            if vec is not None:
                self._vectors.move_to_end(query)
                return vec
        vec = self.embedder.encode([query])[0]
        vec.setflags(write=False)  # shared by every caller of the cache
        with self._vectors_lock:
            self._vectors[query] = vec
            if len(self._vectors) > EMBED_CACHE:
                self._vectors.popitem(last=False)
        return vec

    async def retrieve(self, query: str | np.ndarray, *, k1: int | None = None, k2: int | None = None,
                       delta: float | None = None, lam: float | None = None, episode_id: str | None = None,
                       ef: int | None = None) -> Retrieval:
        """Two-phase value-aware retrieval; a shard that misses ``shard_timeout_s`` is listed in ``missing_shards``.

        With ``episode_id`` the result is pinned to the episode: a retry of the same episode (its actor died)
        gets the same memories back, so the episode's reward reaches exactly the memories it injected.
        ``k1`` / ``k2`` / ``delta`` / ``lam`` override the config for this call; ``ef`` overrides
        ``memory.hnsw_ef_search`` (approximate index only).
        """
        if episode_id is not None and (pinned := await asyncio.to_thread(self._pinned, episode_id)) is not None:
            return pinned
        c = self.cfg
        k1, k2 = k1 or c.k1, k2 or c.k2
        delta = c.delta if delta is None else delta
        lam = c.lam if lam is None else lam
        vec = await asyncio.to_thread(self.embed, query)
        tasks = [asyncio.ensure_future(_as_future(s.search.remote(vec, k1, delta, ef))) for s in self.shards]
        done, _ = await asyncio.wait(tasks, timeout=c.shard_timeout_s) if tasks else (set(), set())
        answers, missing = [], []
        for i, t in enumerate(tasks):
            if t in done and t.exception() is None:
                answers.append(t.result())
            else:
                missing.append(i)
                if t not in done:
                    t.cancel()
        got = await asyncio.to_thread(self._finish, answers, missing, k1, k2, lam)
        if episode_id is not None:
            got = await asyncio.to_thread(self._pin, episode_id, got)
        return got

    def _pin(self, episode_id: str, got: Retrieval) -> Retrieval:
        """Store ``got`` as the episode's retrieval unless one is already there (then return that one)."""
        blob = msgpack.packb([got.id, got.ids, got.scores, got.sims, got.pool, got.missing_shards,
                              got.memory_version])
        key = keys.episode_retrieval_key(self.cfg.namespace, episode_id)
        if retry_idempotent(lambda: self.redis.set(key, blob, nx=True, ex=keys.EPISODE_PIN_TTL_S), "retrieval pin"):
            return got
        return self._pinned(episode_id) or got

    def _pinned(self, episode_id: str) -> Retrieval | None:
        """The episode's pinned retrieval, its records re-read from Redis (evicted ones are left out)."""
        from memory_server.store import MemoryStore

        blob = retry_idempotent(lambda: self.redis.get(keys.episode_retrieval_key(self.cfg.namespace, episode_id)),
                                "pinned retrieval")
        if blob is None:
            return None
        rid, ids, scores, sims, pool, missing, version = msgpack.unpackb(blob)
        records = MemoryStore(self.redis, self.cfg.namespace, self.cfg.shards).get(ids)
        keep = [i for i, r in enumerate(records) if r is not None]
        return Retrieval(rid, [records[i] for i in keep], [scores[i] for i in keep], [sims[i] for i in keep], pool,
                         missing, version)

    def _finish(self, answers: list, missing: list[int], k1: int, k2: int, lam: float) -> Retrieval:
        c = self.cfg
        pool = merge_candidates(answers, k1)
        records, scores, sims = select(pool, lam=lam, k2=k2, q_floor=c.q_floor, epsilon=c.epsilon,
                                       q_clip=c.q_clip, rng=self.rng, own_success_sim=c.own_success_sim)
        version = int(retry_idempotent(lambda: self.redis.hget(keys.meta_key(c.namespace), "version"), "version") or 0)
        return Retrieval(uuid.uuid4().hex, records, scores, sims, [r.id for _, r in pool], missing, version)

    async def add(self, records: Sequence[MemoryRecord]) -> list[str]:
        """Write new memories through their owning shards; returns the ids written."""
        groups = by_shard(records, len(self.shards), key=lambda r: r.id)
        written = await asyncio.gather(*[_as_future(self.shards[s].add.remote(rs)) for s, rs in groups.items()])
        return [i for ids in written for i in ids]

    async def write_episode(self, *, episode_id: str, intent: str, experience: str, won: bool, task_id: str, env: str,
                            model_id: str, adapter_version: int, writer: str, retrieved_ids: list[str]) -> str:
        """Write an episode's experience as a new memory (id derived from the episode: a retried episode writes once)."""
        vec = await asyncio.to_thread(self.embed, intent)
        rec = MemoryRecord(namespace=self.cfg.namespace, intent=intent, embedding=vec, experience=experience,
                           kind="success" if won else "failure", q=self.initial_q(won), id=memory_id_for(episode_id),
                           provenance=Provenance(episode_id, task_id, env, model_id, adapter_version, writer,
                                                 list(retrieved_ids)))
        await self.add([rec])
        await self._keep_within_capacity()
        return rec.id

    def initial_q(self, won: bool) -> float:
        """Q of a memory written by an episode that won / failed (``q_init``, or ``q_init_failure`` for a failure)."""
        c = self.cfg
        return c.q_init if won or c.q_init_failure is None else c.q_init_failure

    async def feedback(self, episode_id: str, memory_ids: Sequence[str], reward: float, *, adapter_version: int = 0,
                       memory_version: int = 0) -> int:
        """Send the episode's reward for its injected memories: one stream entry per owning shard."""
        return await asyncio.to_thread(self.feedback_many, [(episode_id, memory_ids, reward)],
                                       adapter_version=adapter_version, memory_version=memory_version)

    def feedback_many(self, items: Sequence[tuple[str, Sequence[str], float]], *, adapter_version: int = 0,
                      memory_version: int = 0) -> int:
        """Reward events of many episodes in one pipeline round trip (blocking: benchmarks, tests); returns the
        stream entries written."""
        now, entries = time.time(), []
        for episode_id, memory_ids, reward in items:
            for s, ids in by_shard(dict.fromkeys(memory_ids), len(self.shards)).items():  # de-duplicated, in order
                ev = RewardEvent(episode_id, ids, float(reward), now, adapter_version, memory_version)
                entries.append((keys.reward_stream(self.cfg.namespace, s), {"e": encode_reward_event(ev)}))

        def send() -> None:  # all or nothing (MULTI); sent again after a lost connection: the store applies each
            pipe = self.redis.pipeline(transaction=True)  # (episode, memory) once, so a repeat has no effect
            for stream, fields in entries:
                pipe.xadd(stream, fields)
            pipe.execute()

        retry_idempotent(send, "reward events")
        return len(entries)

    # -- blocking helpers: the async calls above, for synchronous callers (never inside an event loop)

    def _blocking(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:  # one private loop per client: its thread pool outlives a call
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def retrieve_blocking(self, query: str | np.ndarray, **kw: Any) -> Retrieval:
        return self._blocking(self.retrieve(query, **kw))

    def add_blocking(self, records: Sequence[MemoryRecord]) -> list[str]:
        return self._blocking(self.add(records))

    def feedback_blocking(self, episode_id: str, memory_ids: Sequence[str], reward: float, **kw: Any) -> int:
        return self.feedback_many([(episode_id, memory_ids, reward)], **kw)

    async def enforce_capacity(self, target: int | None = None) -> list[str]:
        """Evict down to ``target`` (default ``memory.capacity``; lowest Q − age weight first) and drop the evicted
        ids from the shards; returns them."""
        from memory_server.store import MemoryStore

        store = MemoryStore(self.redis, self.cfg.namespace, len(self.shards))
        capacity = self.cfg.capacity if target is None else target
        evicted = await asyncio.to_thread(store.evict, capacity, self.cfg.evict_age_weight)
        groups = by_shard(evicted, len(self.shards))
        await asyncio.gather(*[_as_future(self.shards[s].forget.remote(ids)) for s, ids in groups.items()])
        return evicted

    def enforce_capacity_blocking(self, target: int | None = None) -> list[str]:
        return self._blocking(self.enforce_capacity(target))

    async def _keep_within_capacity(self) -> None:
        """After a write: past ``memory.capacity``, evict down to ``EVICT_TO`` of it (one O(n) eviction scan per
        few percent of capacity written, not one per episode). One eviction at a time per client."""
        index = keys.namespace_index_key(self.cfg.namespace)
        if await asyncio.to_thread(self.redis.zcard, index) <= self.cfg.capacity:
            return
        async with self._evicting:
            if await asyncio.to_thread(self.redis.zcard, index) > self.cfg.capacity:
                await self.enforce_capacity(int(self.cfg.capacity * EVICT_TO))

    def stats(self) -> dict[str, Any]:
        """Namespace counters and Q summary from Redis, plus each shard's consumer statistics."""
        import ray

        from memory_server.store import MemoryStore

        store = MemoryStore(self.redis, self.cfg.namespace, len(self.shards))
        return {**store.q_stats(), "shards": ray.get([s.info.remote() for s in self.shards])}


def memory_id_for(episode_id: str) -> str:
    """The id of the memory an episode writes: stable, so a re-dispatched episode cannot write twice."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"epiq-episode:{episode_id}").hex


def index_params(cfg: MemoryConfig) -> dict[str, int]:
    """The approximate index's constructor arguments from the ``memory`` config section."""
    return {"M": cfg.hnsw_m, "ef_construction": cfg.hnsw_ef_construction, "ef_search": cfg.hnsw_ef_search,
            "threads": cfg.index_threads}


async def _as_future(ref: Any) -> Any:
    return await ref

