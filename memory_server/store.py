"""The Redis store of one memory namespace: records, atomic utility updates, eviction, snapshots.

Owns: reading and writing the keys of ``keys.py`` through its Lua scripts (registered once per store).
Every read-modify-write (add, reward, eviction) is one script call, so concurrent writers never race.
Shards stream their records with ``iter_shard`` to rebuild their in-memory index; the reward consumer calls ``apply_rewards``.

    store = MemoryStore(redis.Redis.from_url(url), "alfworld", shards=4)
    store.add([rec]); store.apply_rewards([(rec.id, "ep-1", 1.0)], alpha=0.3)
    store.snapshot("mem.msgpack"); ...; store.restore("mem.msgpack")      # exact rollback
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgpack
import numpy as np
import redis

from memory_server import keys
from memory_server.records import (FORMAT_VERSION, EmbeddingError, MemoryRecord, WireError, check_record_numbers,
                                   check_unit_norm, decode_record, encode_record)

CHUNK = 1000  # records per pipeline round trip / script call
_STATUS = {1: "applied", 0: "duplicate", -1: "missing", -2: "corrupt"}


class StoreError(RuntimeError):
    """The namespace in Redis does not match this store (shard count, dimension) or kept changing."""


@dataclass
class EventResult:
    """What one reward event did: applied (Q changed), duplicate (no effect), missing (memory gone) or corrupt (the
    stored Q / visits are not numbers: nothing changed, the episode is not marked as applied)."""

    memory_id: str
    episode_id: str
    status: Literal["applied", "duplicate", "missing", "corrupt"]
    q: float | None  # the memory's Q after the event; None when missing or corrupt


def _f(x: float) -> str:
    return repr(float(x))  # shortest text that reads back to the same double


class MemoryStore:
    """One namespace in one Redis server, split into ``shards`` id sets."""

    def __init__(self, client: redis.Redis, namespace: str, shards: int, audit_maxlen: int = 1_000_000) -> None:
        if shards <= 0:
            raise ValueError(f"shards must be > 0, got {shards}")
        self.client, self.namespace, self.shards = client, keys.check_namespace(namespace), shards
        self.audit_maxlen = audit_maxlen
        self._prefix = keys.prefix(namespace)
        self._meta, self._index = keys.meta_key(namespace), keys.namespace_index_key(namespace)
        self._audit, self._qstats = keys.audit_stream(namespace), keys.q_stats_key(namespace)
        self._add = client.register_script(keys.ADD)
        self._swap = client.register_script(keys.RESTORE_SWAP)
        self._apply = client.register_script(keys.APPLY_REWARDS)
        self._evict = client.register_script(keys.EVICT)
        self._get_many = client.register_script(keys.GET_MANY)
        stored = client.hget(self._meta, "shards")
        if stored is not None and int(stored) != shards:
            raise StoreError(f"namespace {namespace!r} is stored with {int(stored)} shards, this store has {shards}; "
                             "use the same memory.shards (or restore a snapshot into a fresh namespace)")

    # ------------------------------------------------------------------ writes

    def add(self, records: Sequence[MemoryRecord]) -> list[str]:
        """Write new records; returns the ids written (an id already stored is skipped, never overwritten)."""
        if not records:
            return []
        dim = self._check_dim(records)
        for rec in records:
            if rec.namespace != self.namespace:
                raise ValueError(f"record {rec.id} is for namespace {rec.namespace!r}, this store is {self.namespace!r}")
            if rec.embedding.shape[0] != dim:
                raise EmbeddingError(f"record {rec.id}: embedding dimension {rec.embedding.shape[0]}, namespace has {dim}")
            check_unit_norm(rec.embedding, f"record {rec.id}: its embedding")
        added: list[str] = []
        for start in range(0, len(records), CHUNK):
            batch = []
            for rec in records[start:start + CHUNK]:
                p = rec.provenance
                batch.append([rec.id, str(keys.shard_of(rec.id, self.shards)), encode_record(rec), _f(rec.q),
                              str(int(rec.visits)), "" if rec.last_reward is None else _f(rec.last_reward),
                              _f(rec.created_at), _f(rec.updated_at or rec.created_at), rec.kind,
                              p.episode_id, p.task_id, p.env, p.model_id, str(p.adapter_version), p.writer,
                              ",".join(p.retrieved_ids)])
            blob = msgpack.packb(batch, use_bin_type=False)  # Lua's cmsgpack cannot read the bin type
            added += [x.decode() for x in self._add(keys=[self._meta, self._index, self._audit, self._qstats],
                                                    args=[self._prefix, self.audit_maxlen, blob])]
        return added

    def _check_dim(self, records: Sequence[MemoryRecord]) -> int:
        """The namespace's embedding dimension, fixed by its first add; also records the shard count."""
        first = int(records[0].embedding.shape[0])
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(self._meta, "dim", first).hsetnx(self._meta, "shards", self.shards).hmget(self._meta, "dim", "shards")
        dim, shards = (int(x) for x in pipe.execute()[-1])
        if shards != self.shards:
            raise StoreError(f"namespace {self.namespace!r} is stored with {shards} shards, this store has {self.shards}")
        return dim

    def apply_rewards(self, events: Sequence[tuple[str, str, float]], alpha: float,
                      now: float | None = None) -> list[EventResult]:
        """Apply (memory_id, episode_id, reward) events in order, atomically per batch of ``CHUNK``.

        Each (episode, memory) pair changes Q once: Q <- Q + α(r − Q), visits + 1; repeats are duplicates.
        """
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        now = time.time() if now is None else now
        out: list[EventResult] = []
        for start in range(0, len(events), CHUNK):
            batch = [[str(m), str(e), float(r)] for m, e, r in events[start:start + CHUNK]]
            if not all(math.isfinite(r) for _, _, r in batch):
                raise ValueError("rewards must be finite")
            reply = self._apply(keys=[self._meta, self._audit, self._qstats],
                                args=[self._prefix, _f(alpha), _f(now), self.audit_maxlen,
                                      msgpack.packb(batch, use_bin_type=False)])
            statuses, qs = msgpack.unpackb(reply, raw=False)
            for (m, e, _), s, q in zip(batch, statuses, qs):
                out.append(EventResult(m, e, _STATUS[s], None if s < 0 else float(q)))
        return out

    def evict(self, capacity: int, age_weight: float = 0.0, now: float | None = None) -> list[str]:
        """Evict down to ``capacity`` memories, lowest Q − age_weight·age_days first; returns evicted ids.

        The O(n) scan that picks candidates runs here in chunked pipelines; the deletion is one script
        call that re-values the candidates (see ``keys.EVICT``).
        """
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        now = time.time() if now is None else now
        evicted: list[str] = []
        for _ in range(3):  # again only if concurrent adds / evictions moved the target meanwhile
            excess = self.count() - capacity
            if excess <= 0:
                break
            ids, values = self._values(age_weight, now)
            take = min(len(ids), excess + excess // 10 + 16)  # a margin for values that change meanwhile
            picked = np.argpartition(values, take - 1)[:take] if take < len(ids) else np.arange(len(ids))
            reply = self._evict(keys=[self._meta, self._index, self._audit, self._qstats],
                                args=[self._prefix, int(capacity), _f(age_weight), _f(now), self.audit_maxlen,
                                      msgpack.packb([ids[i] for i in picked], use_bin_type=False)])
            if not reply:
                break
            evicted += [x.decode() for x in reply]
        return evicted

    def _values(self, age_weight: float, now: float) -> tuple[list[str], np.ndarray]:
        """Every id of the namespace and its eviction value (−inf where the record is gone)."""
        index = self.client.zrange(self._index, 0, -1, withscores=True)
        ids = [m.decode() for m, _ in index]
        created = np.array([c for _, c in index], dtype=np.float64)
        qs = np.array([np.nan if q is None else q for q in self.q_values(ids)], dtype=np.float64)
        values = qs - age_weight * (now - created) / 86400.0
        return ids, np.where(np.isnan(values), -np.inf, values)

    # ------------------------------------------------------------------ reads

    def get(self, ids: Sequence[str]) -> list[MemoryRecord | None]:
        """The records of ``ids`` with their current Q / visits / last reward (None where absent)."""
        return [_to_record(fields) for fields in self._fields(ids, keys.RECORD_FIELDS)]

    def q_values(self, ids: Sequence[str]) -> list[float | None]:
        return [None if q is None else float(q) for (q,) in self._fields(ids, ("q",), chunk=5 * CHUNK)]

    def _fields(self, ids: Sequence[str], fields: Sequence[str], chunk: int = CHUNK) -> Iterator[list[Any]]:
        for start in range(0, len(ids), chunk):
            yield from self._get_many(args=[self._prefix, len(fields), *fields, *ids[start:start + chunk]])

    def shard_ids(self, shard: int) -> list[str]:
        return sorted(x.decode() for x in self.client.smembers(keys.shard_ids_key(self.namespace, shard)))

    def iter_shard(self, shard: int, chunk: int = CHUNK,
                   on_bad: Callable[[str, Exception], None] | None = None) -> Iterator[MemoryRecord]:
        """Every record of ``shard``, ``chunk`` records per round trip (skips ids evicted meanwhile). A stored record
        that does not decode or check (a corrupt field, an embedding that is not unit length) raises, or with
        ``on_bad`` is reported to it and skipped."""
        ids = self.shard_ids(shard)
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            for mid, fields in zip(part, self._fields(part, keys.RECORD_FIELDS)):
                try:
                    rec = _to_record(fields)
                    if rec is not None:
                        check_unit_norm(rec.embedding, f"record {mid}: its embedding")
                except (ValueError, TypeError) as e:  # WireError and EmbeddingError are ValueErrors
                    if on_bad is None:
                        raise
                    on_bad(mid, e)
                    continue
                if rec is not None:
                    yield rec

    def load_shard(self, shard: int) -> list[MemoryRecord]:
        return list(self.iter_shard(shard))

    def dim(self) -> int | None:
        """The namespace's embedding dimension (fixed by its first add); None while it is empty."""
        dim = self.client.hget(self._meta, "dim")
        return None if dim is None else int(dim)

    def count(self) -> int:
        return int(self.client.zcard(self._index))

    def version(self) -> int:
        """Memory writes so far (adds + applied updates + evictions + restores): changes whenever state does."""
        return int(self.client.hget(self._meta, "version") or 0)

    def q_stats(self) -> dict[str, float]:
        """Counters of the namespace plus ``count`` and ``q_mean`` over the live memories."""
        raw = {k.decode(): float(v) for k, v in self.client.hgetall(self._qstats).items()}
        count = self.count()
        return {**raw, "count": count, "q_mean": raw.get("q_sum", 0.0) / count if count else 0.0}

    def audit(self, start: str = "-", count: int | None = None) -> list[dict[str, Any]]:
        """Audit entries, oldest first, as dicts with ``entry`` (stream id) and ``op``; an 'update' entry
        (one per apply_rewards call) expands to one dict per applied event: id, episode, reward, q, visits."""
        out: list[dict[str, Any]] = []
        for entry, raw in self.client.xrange(self._audit, min=start, count=count):
            fields = {k.decode(): v for k, v in raw.items()}
            base = {"entry": entry.decode(), "op": fields.pop("op").decode()}
            if base["op"] == "update":
                for mid, ep, r, q, visits in msgpack.unpackb(fields["events"], raw=False):
                    out.append({**base, "id": mid, "episode": ep, "reward": float(r), "q": float(q), "visits": int(visits)})
            else:
                out.append({**base, **{k: v.decode() for k, v in fields.items()}})
        return out

    # ------------------------------------------------------------------ snapshot / restore

    def snapshot(self, path: str | Path, attempts: int = 3) -> int:
        """Write every record (raw fields, Q, visits) and applied set to a msgpack file; returns the count.

        Consistent: the namespace version is read before and after; if a write landed in between the
        snapshot is taken again (up to ``attempts``), then StoreError: pause the writers and retry.
        """
        path = Path(path)
        for _ in range(attempts):
            before = self.version()
            n = self._write_snapshot(path, before)
            if self.version() == before:
                return n
        path.unlink(missing_ok=True)
        raise StoreError(f"namespace {self.namespace!r} kept changing during {attempts} snapshot attempts; pause writers")

    def _write_snapshot(self, path: Path, version: int) -> int:
        ids = [x.decode() for x in self.client.zrange(self._index, 0, -1)]
        header = {"v": FORMAT_VERSION, "type": "snapshot", "namespace": self.namespace, "version": version,
                  "count": len(ids), "created": time.time(),
                  "meta": _str_map(self.client.hgetall(self._meta)), "qstats": _str_map(self.client.hgetall(self._qstats))}
        tmp = path.with_name(path.name + ".tmp")
        packer = msgpack.Packer(use_bin_type=True)
        written = 0
        with open(tmp, "wb") as f:
            f.write(packer.pack(header))
            for start in range(0, len(ids), CHUNK):
                pipe = self.client.pipeline(transaction=False)
                for mid in ids[start:start + CHUNK]:
                    pipe.hgetall(keys.record_key(self.namespace, mid)).smembers(keys.applied_key(self.namespace, mid))
                replies = pipe.execute()
                for mid, fields, applied in zip(ids[start:start + CHUNK], replies[0::2], replies[1::2]):
                    f.write(packer.pack({"id": mid, "fields": _str_map(fields), "applied": sorted(applied)}))
                    written += 1
        if written != len(ids):
            raise StoreError("snapshot: record count changed while writing")
        os.replace(tmp, path)
        return written

    def restore(self, path: str | Path) -> int:
        """Replace the namespace with a snapshot (records, Q, visits, applied sets, counters); returns the count.

        The whole file is checked first (every record decodes and its numbers are sane); the snapshot is then
        written under staging keys and swapped in by one script call, so a bad file or an interrupted restore
        leaves the live namespace as it was. Audit and reward streams are kept; an audit entry records the
        restore. Run with writers paused.
        """
        header = _check_snapshot(Path(path))
        if header["namespace"] != self.namespace:
            raise StoreError(f"{path} holds namespace {header['namespace']!r}, this store is {self.namespace!r}")
        version = max(self.version(), int(header["version"])) + 1
        staging = self._prefix + "staging:"
        self._unlink_matching(staging + "*")  # what an interrupted restore left behind
        staged: set[str] = set()
        pipe = self.client.pipeline(transaction=False)
        for n, entry in enumerate(_snapshot_entries(Path(path)), start=1):
            mid, fields, shard = entry["id"], dict(entry["fields"]), keys.shard_of(entry["id"], self.shards)
            fields["shard"] = str(shard).encode()
            pipe.hset(f"{staging}rec:{mid}", mapping=fields)
            staged.add(f"rec:{mid}")
            if entry["applied"]:
                pipe.sadd(f"{staging}applied:{mid}", *entry["applied"])
                staged.add(f"applied:{mid}")
            pipe.zadd(staging + "ids", {mid: float(fields["created_at"])})
            pipe.sadd(f"{staging}shard:{shard}", mid)
            staged |= {"ids", f"shard:{shard}"}
            if n % CHUNK == 0:
                pipe.execute()
        meta = {**header["meta"], "shards": str(self.shards).encode(), "version": str(version).encode()}
        pipe.hset(staging + "meta", mapping=meta)
        staged.add("meta")
        if header["qstats"]:
            pipe.hset(staging + "qstats", mapping=header["qstats"])
            staged.add("qstats")
        pipe.execute()
        live = ["ids", "meta", "qstats"] + [k.decode()[len(self._prefix):] for pattern in ("rec:*", "applied:*", "shard:*")
                                            for k in self.client.scan_iter(match=self._prefix + pattern, count=1000)]
        self._swap(args=[self._prefix, staging, msgpack.packb(live, use_bin_type=False),
                         msgpack.packb(sorted(staged), use_bin_type=False)])
        self.client.xadd(self._audit, {"op": "restore", "path": str(path), "count": header["count"],
                                       "from_version": header["version"]}, maxlen=self.audit_maxlen, approximate=True)
        return int(header["count"])

    def _unlink_matching(self, pattern: str) -> None:
        doomed = list(self.client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(doomed), CHUNK):
            self.client.unlink(*doomed[start:start + CHUNK])



def _snapshot_entries(path: Path) -> Iterator[Any]:
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=True)
        next(unpacker, None)  # the header
        yield from unpacker


def _check_snapshot(path: Path) -> dict[str, Any]:
    """The snapshot's header after checking every entry and the count; WireError names what is wrong."""
    try:
        with open(path, "rb") as f:
            header = next(msgpack.Unpacker(f, raw=False, strict_map_key=True), None)
        if not isinstance(header, dict) or header.get("type") != "snapshot" or header.get("v") != FORMAT_VERSION \
                or not {"namespace", "version", "count", "meta", "qstats"} <= header.keys():
            raise WireError(f"{path}: not a version-{FORMAT_VERSION} memory snapshot")
        n = 0
        for entry in _snapshot_entries(path):
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) \
                    or not isinstance(entry.get("fields"), dict) or not isinstance(entry.get("applied"), list) \
                    or not {"blob", "q", "visits", "created_at"} <= entry["fields"].keys():
                raise WireError(f"{path}: entry {n} is not a memory record")
            f = entry["fields"]
            try:  # the record must be servable: it decodes, its numbers are sane, its applied set holds ids
                _to_record([f["blob"], f["q"], f["visits"], f.get("last_reward"), f.get("updated_at", f["created_at"])])
                if not math.isfinite(float(f["created_at"])) or not all(isinstance(a, (str, bytes)) for a in entry["applied"]):
                    raise ValueError("created_at is not a finite number, or an applied episode id is not text")
            except (ValueError, TypeError) as e:
                raise WireError(f"{path}: entry {n} ({entry['id']}): {e}") from None
            n += 1
    except (ValueError, msgpack.UnpackException) as e:
        if isinstance(e, WireError):
            raise
        raise WireError(f"{path}: corrupt snapshot ({e})") from None
    if n != header["count"]:
        raise WireError(f"{path}: truncated snapshot ({n} of {header['count']} records)")
    return header


def _str_map(raw: dict[bytes, bytes]) -> dict[str, bytes]:
    return {k.decode(): v for k, v in raw.items()}


def _to_record(fields: list[Any]) -> MemoryRecord | None:
    blob, q, visits, last_reward, updated_at = fields
    if blob is None:
        return None
    rec = decode_record(blob)
    rec.q, rec.visits, rec.updated_at = float(q), int(visits), float(updated_at)
    rec.last_reward = float(last_reward) if last_reward else None
    check_record_numbers(rec)  # the live fields bypass the record's constructor: check them the same way
    return rec


def read_snapshot(path: str | Path) -> tuple[dict[str, Any], list[MemoryRecord]]:
    """A snapshot file's header and records (with their saved Q, visits, last reward), without a server."""
    path = Path(path)
    header = _check_snapshot(path)
    records = []
    for entry in _snapshot_entries(path):
        f = entry["fields"]
        rec = _to_record([f["blob"], f["q"], f["visits"], f.get("last_reward", b""), f.get("updated_at", f["created_at"])])
        if rec is not None:
            records.append(rec)
    return header, records
