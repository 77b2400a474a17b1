"""One memory shard: the in-memory index of the memories whose ids hash to it, and its reward-stream consumer.

Owns: rebuilding its index (embeddings, Q, records) from Redis at start, Phase A search over its memories,
adding new memories, and applying the reward events of its Redis stream through a consumer group
(``common.streams.StreamConsumer``) — its own un-acknowledged entries first after a restart, then new ones, and
entries left pending by any dead consumer (XAUTOCLAIM). Effects are exactly-once: the store's Lua script applies
an (episode, memory) pair once, and an entry is acknowledged only after it was applied. A malformed entry goes to
the dead-letter stream. Applied events are trimmed from the stream (never a pending one) unless ``keep_events``;
every update is still in the namespace's audit stream.

A plain class; the cluster makes it a Ray actor (``start_shards``) with restarts, so a killed shard comes back,
rebuilds from Redis and finishes what it had not acknowledged. Without Ray:

    shard = MemoryShard(url, "ns", shard=0, shards=1, alpha=0.3, consume=False)
    shard.search(vec, k1=5, delta=0.3); shard.drain()          # apply everything waiting in the stream
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence

import numpy as np
import redis

from common.redis_conn import connect, retry_idempotent
from common.streams import StreamConsumer, field_decoder
from memory_server import keys
from memory_server.index import VectorIndex, make_index
from memory_server.records import MemoryRecord, RewardEvent, check_embedding, decode_reward_event, encode_reward_event
from memory_server.store import MemoryStore

log = logging.getLogger(__name__)

GROUP = "shards"
TRIM_EVERY_S = 5.0  # seconds between trims of the acknowledged reward events


class MemoryShard:
    """The memories with ``shard_of(id) == shard``: index, records and Q in memory; Redis is the truth."""

    def __init__(self, redis_url: str, namespace: str, shard: int, shards: int, *, alpha: float,
                 index: str = "exact", index_params: dict | None = None, scan_threads: int = 0, claim_idle_s: float = 30.0,
                 batch: int = 1000, consume: bool = True, keep_events: bool = False) -> None:
        self.client = connect(redis_url)
        self.keep_events = keep_events  # False: applied (acknowledged) reward events are trimmed from the stream
        self.store = MemoryStore(self.client, namespace, shards)
        self.namespace, self.shard, self.shards = namespace, shard, shards
        self.alpha, self.index_kind, self.batch = alpha, index, batch
        self.index_params = dict(index_params or {}) if index == "approx" else {}  # make_index keyword arguments
        self._blas_limit = None
        if scan_threads > 0:  # process-wide: a shard actor is its own process
            from threadpoolctl import threadpool_limits

            self._blas_limit = threadpool_limits(limits=scan_threads, user_api="blas")
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.stream = keys.reward_stream(namespace, shard)
        self.dead_letter = keys.dead_letter_stream(namespace)
        self.consumer = f"shard-{shard}"  # stable: a restarted shard re-reads its own pending entries first
        self.reader: StreamConsumer[RewardEvent] = StreamConsumer(
            self.client, self.stream, GROUP, self.consumer, decode=field_decoder("e", decode_reward_event),
            dead_letter=self.dead_letter, logger=log,
            dead_letter_log="reward entry %(entry)s of %(stream)s is malformed (%(reason)s): sent to %(dead_letter)s")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = {"applied": 0, "duplicate": 0, "missing": 0, "dead_letter": 0, "reclaimed": 0, "trimmed": 0,
                      "forwarded": 0, "bad_records": 0, "corrupt": 0}
        self.reader.ensure_group()
        self.rebuild()
        if consume:
            self.start()

    # ------------------------------------------------------------------ index

    def rebuild(self) -> int:
        """Reload this shard's memories from Redis; returns how many."""
        t0 = time.perf_counter()
        records = {r.id: r for r in self.store.iter_shard(self.shard, on_bad=self._bad_record)}
        dim = self.store.dim()
        index = make_index(self.index_kind, dim, **self.index_params) if dim else None  # type: ignore[arg-type]
        if index is not None and records:
            index.add(list(records), np.stack([r.embedding for r in records.values()]))
        with self._lock:
            self.records, self.index = records, index
        log.info("shard %d of %s: %d memories loaded in %.2fs", self.shard, self.namespace, len(records),
                 time.perf_counter() - t0)
        return len(records)

    def _bad_record(self, memory_id: str, err: Exception) -> None:
        """A stored record that cannot be served: dead-lettered (it stays in Redis for inspection), not indexed."""
        self.stats["bad_records"] += 1
        self.client.xadd(self.dead_letter, {"record": memory_id, "shard": self.shard, "reason": str(err)[:500]})
        log.warning("shard %d of %s: record %s cannot be served (%s): sent to %s, not indexed", self.shard,
                    self.namespace, memory_id, err, self.dead_letter)

    def _get_index(self, dim: int) -> VectorIndex:
        if self.index is None:
            self.index = make_index(self.index_kind, dim, **self.index_params)  # type: ignore[arg-type]
        return self.index

    def search(self, query: np.ndarray, k1: int, delta: float, ef: int | None = None) -> list[tuple[float, MemoryRecord]]:
        """Phase A on this shard: up to ``k1`` memories with cosine > δ, best first, with their current Q.
        ``ef``: the approximate index's query beam for this call (None = ``memory.hnsw_ef_search``)."""
        with self._lock:
            if self.index is None or len(self.index) == 0:
                return []
            query = check_embedding(query, self.index.dim)
            ids, sims = self.index.search(query, k1, ef)
            return [(float(s), self.records[i]) for i, s in zip(ids, sims) if s > delta]

    def add(self, records: Sequence[MemoryRecord]) -> list[str]:
        """Write new memories (Redis first, then the index); returns the ids written."""
        records = [r for r in records if keys.shard_of(r.id, self.shards) == self.shard]
        written = retry_idempotent(lambda: self.store.add(records), f"shard {self.shard} add")  # keyed by id
        with self._lock:  # index what is stored and not indexed yet (a retry finds its first attempt's records)
            fresh = [r for r in records if r.id not in self.records]
            if fresh:
                self._get_index(fresh[0].embedding.shape[0]).add([r.id for r in fresh], np.stack([r.embedding for r in fresh]))
                self.records.update((r.id, r) for r in fresh)
        return list(written)

    def forget(self, ids: Sequence[str]) -> int:
        """Drop evicted memories from the index (the store already deleted them)."""
        with self._lock:
            gone = [i for i in ids if i in self.records]
            if gone and self.index is not None:
                self.index.remove(gone)
            for i in gone:
                del self.records[i]
        return len(gone)

    def get(self, ids: Sequence[str]) -> list[MemoryRecord | None]:
        with self._lock:
            return [self.records.get(i) for i in ids]

    def size(self) -> int:
        return len(self.records)

    # ------------------------------------------------------------------ reward stream

    def consume(self, block_ms: int | None = 100) -> int:
        """Read and apply one batch (own backlog first, then new entries); returns entries handled.

        ``block_ms=None`` never waits; otherwise it waits up to ``block_ms`` for new entries.
        """
        return self._handle(self.reader.read(self.batch, block_ms, fill=False))

    def reclaim(self) -> int:
        """Take over entries another (dead) consumer left pending longer than ``claim_idle_s``, and apply them."""
        handled = 0
        for entries in self.reader.reclaim(self.claim_idle_ms, self.batch):
            handled += self._handle(entries)
            self.stats["reclaimed"] += len(entries)
        return handled

    def _handle(self, entries: list) -> int:
        if not entries:
            return 0
        items, dead = self.reader.decode(entries)  # deleted while pending or malformed: None (acknowledged below)
        forward: list[tuple[int, RewardEvent]] = []  # memories of other shards, sent to their owners' streams
        events = []
        for _, ev in items:
            if ev is None:
                continue
            owners: dict[int, list[str]] = {}
            for m in ev.memory_ids:
                owners.setdefault(keys.shard_of(m, self.shards), []).append(m)
            events += [(m, ev.episode_id, ev.reward) for m in owners.pop(self.shard, [])]
            forward += [(s, RewardEvent(ev.episode_id, ids, ev.reward, ev.time, ev.adapter_version, ev.memory_version))
                        for s, ids in owners.items()]
        results = self.store.apply_rewards(events, self.alpha) if events else []
        with self._lock:
            for res in results:
                self.stats[res.status] += 1
                rec = self.records.get(res.memory_id)
                if rec is not None and res.q is not None:
                    rec.q = res.q
                    if res.status == "applied":
                        rec.visits += 1
        pipe = self.client.pipeline(transaction=False)
        for res in results:  # a corrupt memory cannot take its reward: kept in the dead-letter stream, not dropped
            if res.status == "corrupt":
                pipe.xadd(self.dead_letter, {"memory": res.memory_id, "episode": res.episode_id, "shard": self.shard,
                                             "reason": "the memory's stored Q or visits are not numbers"})
                log.warning("shard %d: memory %s is corrupt; the reward of %s went to %s", self.shard,
                            res.memory_id, res.episode_id, self.dead_letter)
        for s, ev in forward:  # re-sent before this entry is acknowledged (a crash in between sends it twice, and
            pipe.xadd(keys.reward_stream(self.namespace, s), {"e": encode_reward_event(ev)})  # applies it once)
        self.stats["forwarded"] += len(forward)
        self.stats["dead_letter"] += self.reader.dead_letter(dead, pipe)
        self.reader.ack([e for e, _ in entries], pipe)
        pipe.execute()
        return len(entries)

    def drain(self, max_loops: int = 1_000_000) -> int:
        """Apply everything waiting (backlog, new, reclaimable) and return; for tests and batch jobs."""
        total = 0
        for _ in range(max_loops):
            was_backlog = self.reader.in_backlog
            n = self.consume(block_ms=None)
            total += n
            if n == 0 and not was_backlog:
                break
        total += self.reclaim()
        if not self.keep_events:
            self.stats["trimmed"] += self.reader.trim_acknowledged()
        return total

    def pending(self) -> int:
        return self.reader.pending()

    # ------------------------------------------------------------------ background loop

    def start(self) -> None:
        """Consume the reward stream on a background thread until ``stop``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"shard-{self.shard}-consumer", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        last_claim = last_trim = 0.0
        while not self._stop.is_set():
            try:
                self.consume()
                if time.monotonic() - last_claim > self.claim_idle_ms / 2000:
                    self.reclaim()
                    last_claim = time.monotonic()
                if not self.keep_events and time.monotonic() - last_trim > TRIM_EVERY_S:  # applied events: drop
                    self.stats["trimmed"] += self.reader.trim_acknowledged()
                    last_trim = time.monotonic()
            except redis.RedisError as e:  # deliberate retry: the server may be restarting or was flushed
                log.warning("shard %d: %s: %s; retrying", self.shard, type(e).__name__, e)
                self.reader.restart_backlog()
                self._stop.wait(0.5)
                with contextlib.suppress(redis.RedisError):
                    self.reader.ensure_group()  # the stream and group are gone after a flush or a restart without AOF

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def info(self) -> dict:
        return {"shard": self.shard, "memories": len(self.records), "pending": self.pending(), **self.stats}
