"""common.streams.StreamConsumer on a real valkey server: group, backlog then new, reclaim, dead letters, acks."""

from __future__ import annotations

import logging

import pytest
import redis

from common.streams import StreamConsumer, field_decoder
from common.wire import WireError

STREAM, GROUP, DEAD = "t:stream", "g", "t:dead"


def _decode(raw: bytes) -> int:
    if not raw.isdigit():
        raise WireError(f"not a number: {raw!r}")
    return int(raw)


def _consumer(client: redis.Redis, name: str = "c0", **kw) -> StreamConsumer[int]:
    c = StreamConsumer(client, STREAM, GROUP, name, decode=field_decoder("n", _decode), dead_letter=DEAD, **kw)
    c.ensure_group()
    return c


def _put(client: redis.Redis, *values: str) -> list[bytes]:
    return [client.xadd(STREAM, {"n": v}) for v in values]


def test_group_is_idempotent_and_needs_a_dead_letter_stream(redis_client: redis.Redis) -> None:
    c = _consumer(redis_client)
    c.ensure_group()  # BUSYGROUP is fine
    assert redis_client.exists(STREAM) and c.pending() == 0 and c.unacknowledged() == 0
    with pytest.raises(ValueError, match="dead-letter"):
        StreamConsumer(redis_client, STREAM, GROUP, "c1", decode=_decode)
    with pytest.raises(redis.ResponseError):  # other errors propagate: the key is not a stream
        redis_client.set("t:plain", "x")
        StreamConsumer(redis_client, "t:plain", GROUP, "c1").ensure_group()


def test_backlog_first_then_new_with_fill(redis_client: redis.Redis) -> None:
    ids = _put(redis_client, *"0123")
    first = _consumer(redis_client)
    assert [e for e, _ in first.read(3)] == ids[:3]  # delivered, never acknowledged: the consumer "dies"
    assert first.unacknowledged() == 4  # 3 pending + 1 not yet delivered
    again = _consumer(redis_client)  # same name: its pending entries come back first
    got = again.read(3)
    assert [e for e, _ in got] == ids[:3] and again.in_backlog  # a full backlog read: the backlog may go on
    # default cursor "0" (nothing acknowledged in between): the same backlog again (issue 14's case)
    assert [e for e, _ in again.read(3)] == ids[:3] and again.in_backlog
    got = again.read(5, block_ms=10)  # short backlog read: the backlog ends, the batch is topped up with new
    assert [e for e, _ in got] == ids and again.in_backlog is False
    more = _put(redis_client, "4", "5")
    assert [e for e, _ in again.read(5, block_ms=10)] == more


def test_backlog_without_fill_returns_backlog_or_new(redis_client: redis.Redis) -> None:
    ids = _put(redis_client, *"012")
    _consumer(redis_client).read(2)
    c = _consumer(redis_client)
    assert [e for e, _ in c.read(10, fill=False)] == ids[:2] and c.in_backlog  # short, but not empty
    c.ack(ids[:2])
    assert c.read(10, fill=False) == [] and not c.in_backlog  # empty: the backlog is over, nothing new read
    assert [e for e, _ in c.read(10, block_ms=None, fill=False)] == ids[2:]
    c.restart_backlog()
    assert c.in_backlog and [e for e, _ in c.read(10, fill=False)] == ids[2:]


def test_advance_cursor_reads_a_long_backlog_once(redis_client: redis.Redis) -> None:
    ids = _put(redis_client, *"01234")
    _consumer(redis_client).read(5)
    c = _consumer(redis_client, advance_cursor=True)
    assert [e for e, _ in c.read(2)] == ids[:2]
    assert [e for e, _ in c.read(2)] == ids[2:4]
    assert [e for e, _ in c.read(2, block_ms=10)] == ids[4:] and not c.in_backlog
    c.restart_backlog()
    assert c.cursor == "0" and [e for e, _ in c.read(5)] == ids


def test_decode_dead_letter_and_ack(redis_client: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    ids = _put(redis_client, "7", "x")
    other = redis_client.xadd(STREAM, {"m": "1"})
    gone = redis_client.xadd(STREAM, {"n": "8"})
    c = _consumer(redis_client, dead_letter_log="probe %(entry)s of %(stream)s (%(reason)s) -> %(dead_letter)s")
    entries = c.read(10)
    redis_client.xdel(STREAM, gone)
    entries = [(e, None if e == gone else f) for e, f in entries]  # as a pending entry deleted meanwhile reads
    items, rejects = c.decode(entries)
    assert items == [(ids[0], 7), (ids[1], None), (other, None), (gone, None)]
    assert [(e, r) for e, _, r in rejects] == [(ids[1], "not a number: b'x'"), (other, "entry has no 'n' field")]
    with caplog.at_level(logging.WARNING, logger="common.streams"):
        pipe = redis_client.pipeline(transaction=False)
        assert c.dead_letter(rejects, pipe) == 2
        c.ack([e for e, _ in entries], pipe)
        assert redis_client.xlen(DEAD) == 0  # queued on the caller's pipeline
        pipe.execute()
    dead = [f for _, f in redis_client.xrange(DEAD)]
    assert dead[0] == {b"stream": STREAM.encode(), b"entry": ids[1], b"reason": b"not a number: b'x'",
                       b"raw": repr({b"n": b"x"}).encode()}
    assert dead[1][b"entry"] == other and dead[1][b"reason"] == b"entry has no 'n' field"
    assert f"probe {ids[1]!s} of {STREAM} (not a number: b'x') -> {DEAD}" in caplog.text
    assert c.pending() == 0 and c.dead_letter([]) == 0


def test_reclaim_takes_over_entries_of_a_dead_consumer(redis_client: redis.Redis) -> None:
    ids = _put(redis_client, *"012345")
    _consumer(redis_client, "dead").read(6)
    c = _consumer(redis_client, "alive")
    assert c.read(10, block_ms=None) == [] and not c.in_backlog  # nothing of its own
    assert [b for b in c.reclaim(min_idle_ms=60_000, count=4) if b] == []  # not idle long enough
    batches = []
    for batch in c.reclaim(min_idle_ms=0, count=4):
        batches.append([e for e, _ in batch])
        c.ack([e for e, _ in batch])  # handled before the next batch is claimed
    assert [e for b in batches for e in b] == ids and max(len(b) for b in batches) == 4
    assert c.pending() == 0


def test_trim_removes_only_what_every_group_acknowledged(redis_url: str) -> None:
    """Acknowledged entries go; a pending entry (with any group) and undelivered entries stay readable."""
    client = redis.Redis.from_url(redis_url)
    stream = "epiq:test:trim"
    a = StreamConsumer(client, stream, "ga", "c")
    b = StreamConsumer(client, stream, "gb", "c")
    a.ensure_group()
    b.ensure_group()
    ids = [client.xadd(stream, {"i": str(i)}) for i in range(10)]
    got_a = a.read_new(6)
    a.ack([e for e, _ in got_a if e != ids[3]])  # group a holds entry 3 pending
    got_b = b.read_new(8)
    b.ack([e for e, _ in got_b])  # group b acknowledged 0..7; 8, 9 undelivered to both
    assert a.trim_acknowledged() == 3  # 0, 1, 2: the oldest entry still needed is a's pending 3
    left = [e for e, _ in client.xrange(stream)]
    assert left == ids[3:]
    assert [e for e, _ in a.read_pending(10)] == [ids[3]]  # still pending and readable
    a.ack([ids[3]])
    assert a.trim_acknowledged() == 2  # up to a's last delivered (5), kept itself
    assert [e for e, _ in client.xrange(stream)][0] == ids[5] and len(a.read_new(10)) == 4
