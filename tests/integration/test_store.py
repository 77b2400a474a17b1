"""MemoryStore against a real valkey server: round trips, exactly-once rewards, eviction, snapshot/restore."""

import random
import threading

import msgpack
import numpy as np
import pytest

from memory_server import keys
from memory_server.records import EmbeddingError, MemoryRecord, Provenance, WireError
from memory_server.scoring import q_update
from memory_server.store import MemoryStore, StoreError

DIM = 16


def make_records(n: int, ns: str = "test", seed: int = 0, created_at: float = 1000.0) -> list[MemoryRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        vec = rng.normal(size=DIM).astype(np.float32)
        prov = Provenance(episode_id=f"w{i}", task_id=f"t{i % 5}", env="textworld", model_id="epiq-tiny",
                          adapter_version=1, writer="actor-0", retrieved_ids=[])
        out.append(MemoryRecord(namespace=ns, intent=f"task {i}", embedding=vec / np.linalg.norm(vec),
                                experience=f"steps {i}", kind="success" if i % 2 else "failure", provenance=prov,
                                created_at=created_at + i))
    return out


def dump_namespace(client, ns: str, shards: int) -> dict:
    """Everything restore must bring back, raw from Redis."""
    index = client.zrange(keys.namespace_index_key(ns), 0, -1, withscores=True)
    ids = [m.decode() for m, _ in index]
    return {
        "index": index,
        "records": {i: client.hgetall(keys.record_key(ns, i)) for i in ids},
        "applied": {i: client.smembers(keys.applied_key(ns, i)) for i in ids},
        "shards": [client.smembers(keys.shard_ids_key(ns, s)) for s in range(shards)],
        "qstats": client.hgetall(keys.q_stats_key(ns)),
    }


def test_add_get_round_trip_and_shards(redis_client):
    store = MemoryStore(redis_client, "test", shards=3)
    recs = make_records(50)
    recs[3].provenance.retrieved_ids = ["x", "y"]
    assert store.add(recs) == [r.id for r in recs]
    assert store.add(recs[:5]) == []  # already stored: skipped, not overwritten
    assert store.count() == 50
    got = store.get([r.id for r in recs] + ["nope"])
    assert got[:50] == recs and got[50] is None
    loaded = [rec for s in range(3) for rec in store.load_shard(s)]
    assert sorted(r.id for r in loaded) == sorted(r.id for r in recs)
    for s in range(3):
        assert all(keys.shard_of(r.id, 3) == s for r in store.load_shard(s))
    assert keys.shard_of("abc", 4) == 0x352441C2 % 4  # crc32: the same in every process and Python version
    audit = store.audit()
    assert len(audit) == 50 and audit[3]["retrieved"] == "x,y" and audit[0]["op"] == "add"
    assert audit[0]["episode"] == "w0" and audit[0]["task"] == "t0" and audit[0]["adapter"] == "1"


def test_store_checks_dimension_namespace_and_shard_count(redis_client):
    store = MemoryStore(redis_client, "test", shards=2)
    store.add(make_records(2))
    bad = make_records(1, seed=1)[0]
    bad.embedding = np.ones(DIM + 1, dtype=np.float32)
    with pytest.raises(EmbeddingError, match="dimension 17, namespace has 16"):
        store.add([bad])
    with pytest.raises(ValueError, match="namespace"):
        store.add(make_records(1, ns="other"))
    with pytest.raises(StoreError, match="2 shards"):
        MemoryStore(redis_client, "test", shards=4)
    with pytest.raises(ValueError, match="namespace"):
        MemoryStore(redis_client, "bad:name*", shards=1)


def test_apply_rewards_exactly_once_and_replay(redis_client):
    store = MemoryStore(redis_client, "test", shards=2)
    recs = make_records(20)
    store.add(recs)
    ids = [r.id for r in recs]
    rng = random.Random(0)
    events = [(rng.choice(ids), f"ep{rng.randrange(300)}", rng.choice([1.0, -1.0, 0.0, 0.5])) for _ in range(3000)]
    events += events[:500]  # redelivered events: no further effect
    results = []
    for start in range(0, len(events), 700):  # several batches, in order
        results += store.apply_rewards(events[start:start + 700], alpha=0.3, now=5000.0)

    q = {i: 0.0 for i in ids}
    seen: set[tuple[str, str]] = set()
    for (mid, ep, r), res in zip(events, results):
        if (mid, ep) in seen:
            assert res.status == "duplicate" and res.q == q[mid]
            continue
        seen.add((mid, ep))
        q[mid] = q_update(q[mid], r, 0.3)
        assert res.status == "applied" and res.q == q[mid]  # bit-exact: Lua does the same double arithmetic
    assert store.q_values(ids) == [q[i] for i in ids]
    for rec in store.get(ids):
        assert rec.visits == len({ep for (m, ep) in seen if m == rec.id})
        assert rec.updated_at == 5000.0
    updates = [a for a in store.audit() if a["op"] == "update"]
    assert [(a["id"], a["episode"], a["reward"], a["q"]) for a in updates] == \
        [(e[0], e[1], e[2], r.q) for e, r in zip(events, results) if r.status == "applied"]
    stats = store.q_stats()
    assert stats["updates"] == len(seen) and stats["duplicates"] == len(events) - len(seen)
    assert stats["q_sum"] == pytest.approx(sum(q.values()))


def test_missing_memory_is_counted_not_created(redis_client):
    store = MemoryStore(redis_client, "test", shards=1)
    rec = make_records(1)[0]
    store.add([rec])
    out = store.apply_rewards([("gone", "ep1", 1.0), (rec.id, "ep1", 1.0), (rec.id, "ep1", -1.0)], alpha=0.5)
    assert [r.status for r in out] == ["missing", "applied", "duplicate"]
    assert out[0].q is None and out[1].q == 0.5 and out[2].q == 0.5
    assert not redis_client.exists(keys.applied_key("test", "gone"), keys.record_key("test", "gone"))
    assert store.q_stats()["missing"] == 1
    with pytest.raises(ValueError, match="finite"):
        store.apply_rewards([(rec.id, "ep2", float("nan"))], alpha=0.5)


def test_evict_removes_lowest_value_and_audits(redis_client):
    store = MemoryStore(redis_client, "test", shards=2)
    recs = make_records(6, created_at=0.0)  # created 0..5 s
    recs[0].created_at = -2 * 86400.0  # two days older than the rest
    store.add(recs)
    ids = [r.id for r in recs]
    rewards = {ids[0]: 1.0, ids[1]: -1.0, ids[2]: 0.5, ids[3]: -0.5, ids[4]: 1.0, ids[5]: 0.0}
    store.apply_rewards([(i, "ep", r) for i, r in rewards.items()], alpha=1.0)  # Q = reward
    assert store.evict(capacity=10) == []
    assert store.evict(capacity=4) == [ids[1], ids[3]]
    assert store.count() == 4 and store.get([ids[1], ids[3]]) == [None, None]
    assert not redis_client.exists(keys.applied_key("test", ids[1]))
    assert all(ids[1] not in [r.id for r in store.load_shard(s)] for s in range(2))
    evicts = [a for a in store.audit() if a["op"] == "evict"]
    assert [a["id"] for a in evicts] == [ids[1], ids[3]] and float(evicts[0]["q"]) == -1.0
    # age: with a weight of 1 Q per day, ids[0] (Q=1, 2 days older) is worth less than ids[5] (Q=0)
    assert store.evict(capacity=3, age_weight=1.0, now=0.0) == [ids[0]]
    assert store.q_stats()["q_sum"] == pytest.approx(0.5 + 1.0 + 0.0)
    assert store.apply_rewards([(ids[1], "ep9", 1.0)], alpha=0.3)[0].status == "missing"


def test_snapshot_change_restore_is_exact(redis_client, tmp_path):
    store = MemoryStore(redis_client, "test", shards=3)
    recs = make_records(40)
    store.add(recs)
    ids = [r.id for r in recs]
    store.apply_rewards([(ids[i % 40], f"ep{i}", (-1.0) ** i) for i in range(200)], alpha=0.3)
    before = dump_namespace(redis_client, "test", 3)
    version = store.version()
    assert store.snapshot(tmp_path / "snap.msgpack") == 40

    store.apply_rewards([(i, "later", 1.0) for i in ids], alpha=0.3)
    store.add(make_records(5, seed=7))
    store.evict(capacity=30)
    assert dump_namespace(redis_client, "test", 3) != before

    assert store.restore(tmp_path / "snap.msgpack") == 40
    assert dump_namespace(redis_client, "test", 3) == before
    assert store.version() > version
    assert [r.q for r in store.get(ids)] == [float(before["records"][i][b"q"]) for i in ids]
    # the applied sets came back too: an episode applied before the snapshot is still a duplicate
    assert store.apply_rewards([(ids[0], "ep0", 1.0)], alpha=0.3)[0].status == "duplicate"
    assert store.audit()[-1]["op"] == "restore"


def test_restore_rejects_other_namespace_and_corrupt_files(redis_client, tmp_path):
    MemoryStore(redis_client, "a", shards=1).snapshot(tmp_path / "a.msgpack")
    with pytest.raises(StoreError, match="namespace 'a'"):
        MemoryStore(redis_client, "b", shards=1).restore(tmp_path / "a.msgpack")
    store = MemoryStore(redis_client, "test", shards=2)
    store.add(make_records(5))
    assert store.dim() == DIM
    store.snapshot(tmp_path / "s.msgpack")
    data = (tmp_path / "s.msgpack").read_bytes()
    (tmp_path / "cut.msgpack").write_bytes(data[: len(data) - 3000])
    with pytest.raises(WireError, match="truncated|corrupt"):
        store.restore(tmp_path / "cut.msgpack")
    (tmp_path / "junk.msgpack").write_bytes(b"not a snapshot")
    with pytest.raises(WireError, match="not a version-1 memory snapshot|corrupt"):
        store.restore(tmp_path / "junk.msgpack")
    assert store.count() == 5  # nothing was deleted by the failed restores
    ids = store.shard_ids(0) + store.shard_ids(1)
    store.apply_rewards([(i, "e", 1.0) for i in ids], alpha=0.5)
    assert store.restore(tmp_path / "s.msgpack") == 5 and store.q_values(ids) == [0.0] * 5


def test_concurrent_writers_match_the_audit_replay(redis_client):
    """8 threads send overlapping events at once: visits = distinct pairs, Q = replay of the audit order."""
    store = MemoryStore(redis_client, "test", shards=2)
    recs = make_records(10)
    store.add(recs)
    ids = [r.id for r in recs]

    def writer(w: int) -> None:
        rng = random.Random(w)
        own = MemoryStore(redis_client, "test", shards=2)
        events = [(rng.choice(ids), f"ep{rng.randrange(200)}", rng.choice([1.0, -1.0])) for _ in range(1000)]
        for start in range(0, 1000, 100):
            own.apply_rewards(events[start:start + 100], alpha=0.3)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    q = {i: 0.0 for i in ids}
    pairs = set()
    for a in store.audit():
        if a["op"] == "update":
            assert (a["id"], a["episode"]) not in pairs
            pairs.add((a["id"], a["episode"]))
            q[a["id"]] = q_update(q[a["id"]], a["reward"], 0.3)
    assert store.q_values(ids) == [q[i] for i in ids]
    assert [r.visits for r in store.get(ids)] == [sum(1 for m, _ in pairs if m == i) for i in ids]


def test_evict_script_revalues_candidates_at_deletion(redis_client):
    store = MemoryStore(redis_client, "test", shards=1)
    recs = make_records(3)
    store.add(recs)
    a, b, c = (r.id for r in recs)
    store.apply_rewards([(a, "e", -1.0), (b, "e", 0.0), (c, "e", 1.0)], alpha=1.0)
    # a stale candidate list (c first): the script still evicts the lowest value among the candidates
    reply = store._evict(keys=[keys.meta_key("test"), keys.namespace_index_key("test"), keys.audit_stream("test"),
                               keys.q_stats_key("test")],
                         args=[keys.prefix("test"), 2, "0.0", "0.0", 1000, msgpack.packb([c, a], use_bin_type=False)])
    assert [x.decode() for x in reply] == [a]
    assert store.count() == 2


def test_add_checks_every_record_before_writing_any(redis_client):
    """A batch whose second record has a non-finite timestamp writes nothing (before: the first was written,
    orphaned from the counters, and the error came after)."""
    import redis

    store = MemoryStore(redis_client, "addcheck", 1)
    stored, first, second = make_records(3, "addcheck")
    store.add([stored])  # fixes the dimension

    def row(r: MemoryRecord, created: str) -> list:
        return [r.id, "0", b"x", "0", "0", "", created, created, r.kind, "e", "t", "env", "m", "0", "w", ""]

    blob = msgpack.packb([row(first, "1000"), row(second, "nan")], use_bin_type=False)
    with pytest.raises(redis.ResponseError, match="created_at is not a finite number"):
        store._add(keys=[store._meta, store._index, store._audit, store._qstats], args=[store._prefix, 100, blob])
    assert not redis_client.exists(keys.record_key("addcheck", first.id)) and store.count() == 1


def test_a_corrupt_memory_s_reward_is_reported_not_marked_applied(redis_client):
    """Corrupt stored visits: the event returns 'corrupt', nothing is written and the episode is not marked, so the
    event applies once the record is repaired (before: the script raised after marking it, and the retry was
    counted a duplicate: the reward was lost)."""
    store = MemoryStore(redis_client, "corrupt", 1)
    rec = make_records(1, "corrupt")[0]
    store.add([rec])
    redis_client.hset(keys.record_key("corrupt", rec.id), "visits", "many")
    [res] = store.apply_rewards([(rec.id, "ep-1", 1.0)], alpha=0.5)
    assert res.status == "corrupt" and not redis_client.sismember(keys.applied_key("corrupt", rec.id), "ep-1")
    redis_client.hset(keys.record_key("corrupt", rec.id), "visits", "0")
    [res] = store.apply_rewards([(rec.id, "ep-1", 1.0)], alpha=0.5)
    assert res.status == "applied" and res.q == pytest.approx(0.5)


def test_a_snapshot_with_a_bad_field_leaves_the_namespace_as_it_was(redis_client, tmp_path):
    """Every field of every entry is checked before the swap (before: only the keys were, the namespace was
    cleared first, and a non-numeric field left it empty)."""
    store = MemoryStore(redis_client, "swap", shards=2)
    store.add(make_records(6, "swap"))
    store.snapshot(tmp_path / "s.msgpack")
    with open(tmp_path / "s.msgpack", "rb") as f:
        header, *entries = list(msgpack.Unpacker(f, raw=False, strict_map_key=True))
    entries[4]["fields"]["visits"] = b"lots"
    with open(tmp_path / "bad.msgpack", "wb") as f:
        for item in (header, *entries):
            f.write(msgpack.packb(item, use_bin_type=True))
    before = dump_namespace(redis_client, "swap", 2)
    with pytest.raises(WireError, match="entry 4"):
        store.restore(tmp_path / "bad.msgpack")
    assert dump_namespace(redis_client, "swap", 2) == before
    assert not list(redis_client.scan_iter(match=keys.prefix("swap") + "staging:*"))
    assert store.restore(tmp_path / "s.msgpack") == 6 and store.count() == 6
    assert dump_namespace(redis_client, "swap", 2)["records"].keys() == before["records"].keys()
