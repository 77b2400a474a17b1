"""One consumer of one Redis stream through a consumer group: the reading side every stream of epiq shares.

Owns: creating the group (idempotent: MKSTREAM, an existing group is fine), reading the consumer's own
delivered-but-unacknowledged entries (its pending list, left by a previous life of the same consumer name) before
new ones, reclaiming entries that other consumers left pending too long (XAUTOCLAIM), decoding entries with the
caller's decoder and sending the ones it rejects to a dead-letter stream (one XADD per entry: ``stream``,
``entry``, ``reason``, ``raw`` = the entry's fields as text), and acknowledging. What an entry means, when it is
acknowledged and what is counted stay with the caller (``memory_server/shard.py``: applied then acknowledged per
batch; ``learner/buffer.py``: acknowledged by the learner's commit script, long after the read).

Entry ids and fields are passed through as redis-py returns them (bytes unless the client decodes responses);
an entry deleted while it was pending comes back with fields ``None``. Imports nothing but redis, the standard
library and ``common``.

    c = StreamConsumer(client, "epiq:x:events", "workers", "worker-0", decode=field_decoder("e", decode_event),
                       dead_letter="epiq:x:dead")
    c.ensure_group()
    entries = c.read(100, block_ms=100)          # own pending first (after a restart), then new entries
    items, rejects = c.decode(entries)           # [(entry_id, value or None)], [(entry_id, fields, reason)]
    pipe = client.pipeline(transaction=False)
    c.dead_letter(rejects, pipe); c.ack([e for e, _ in entries], pipe); pipe.execute()
    for batch in c.reclaim(min_idle_ms=30_000, count=100): ...   # entries of dead consumers, now this one's
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import redis

from common.wire import WireError

T = TypeVar("T")
EntryId = bytes | str
Fields = Mapping[bytes, bytes]  # Mapping[str, str] with a client that decodes responses
Entry = tuple[EntryId, Fields | None]  # fields None: the entry was deleted while pending
Reject = tuple[EntryId, Fields, str]  # an entry the decoder rejected, with the reason

_log = logging.getLogger(__name__)
_DONE = (b"0-0", "0-0")  # XAUTOCLAIM's cursor when the whole pending list was scanned


def field_decoder(name: str, decode: Callable[[bytes], T]) -> Callable[[Fields], T]:
    """A decoder of entries that carry one message in field ``name``: WireError when the field is missing."""
    key = name.encode()

    def decoder(fields: Fields) -> T:
        if key in fields:
            return decode(fields[key])
        if name in fields:  # a client that decodes responses
            return decode(fields[name])  # type: ignore[index]
        raise WireError(f"entry has no {name!r} field")

    return decoder


class StreamConsumer(Generic[T]):
    """Consumer ``consumer`` of group ``group`` over ``stream``. Holds no connection of its own: ``client``'s.

    Read state: ``in_backlog`` is True until the consumer's own pending list was read through (at construction
    and after ``restart_backlog``); backlog reads start after ``cursor`` ("0": the start of the pending list).

    ``advance_cursor``: move ``cursor`` past the last entry of each backlog read. Needed by a consumer that
    acknowledges later than it reads (without it a backlog longer than one read returns its first entries on
    every read); off, every backlog read starts at "0", which is right for a consumer that acknowledges each
    batch before reading the next.

    ``decode`` turns an entry's fields into a value and raises ``WireError`` for an entry that is malformed
    (see ``field_decoder``); other exceptions propagate. Rejected entries go to ``dead_letter`` with a warning,
    ``dead_letter_log`` formatted with the mapping ``entry``, ``stream``, ``reason``, ``dead_letter`` on ``logger``.
    """

    def __init__(self, client: redis.Redis, stream: str, group: str, consumer: str, *,
                 decode: Callable[[Fields], T] | None = None, dead_letter: str | None = None,
                 advance_cursor: bool = False, group_start: str = "0",
                 dead_letter_log: str = "entry %(entry)s of %(stream)s is malformed (%(reason)s): sent to %(dead_letter)s",
                 logger: logging.Logger | None = None) -> None:
        if decode is not None and dead_letter is None:
            raise ValueError("a consumer that decodes needs a dead-letter stream for the entries it rejects")
        self.client, self.stream, self.group, self.consumer = client, stream, group, consumer
        self.decoder, self.dead_letter_stream = decode, dead_letter
        self.advance_cursor, self.group_start = advance_cursor, group_start
        self.dead_letter_log, self.log = dead_letter_log, logger or _log
        self.in_backlog = True
        self.cursor: EntryId = "0"

    # ------------------------------------------------------------------ group

    def ensure_group(self) -> None:
        """Create the group (and the stream) unless it exists; the group starts at ``group_start``."""
        try:
            self.client.xgroup_create(self.stream, self.group, id=self.group_start, mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    # ------------------------------------------------------------------ reading

    def read(self, count: int, block_ms: int | None = None, *, fill: bool = True) -> list[Entry]:
        """Up to ``count`` entries: the own backlog while ``in_backlog``, then new ones (waiting up to ``block_ms``).

        Backlog reads never wait. ``fill=True``: the backlog ends with the first read that returns fewer than
        ``count`` entries, and the same call tops the batch up with new entries. ``fill=False``: a call returns
        backlog or new entries, never both; the backlog ends with the first read that returns none.
        """
        entries: list[Entry] = []
        if self.in_backlog:
            entries = self.read_pending(count)
            self.in_backlog = len(entries) == count if fill else bool(entries)
            if self.in_backlog or not fill:
                return entries
        return entries + self.read_new(count - len(entries), block_ms)

    def read_pending(self, count: int) -> list[Entry]:
        """Up to ``count`` of the own pending entries after ``cursor`` (advanced past them if ``advance_cursor``)."""
        entries = self._xreadgroup(self.cursor, count, None)
        if self.advance_cursor and entries:
            self.cursor = entries[-1][0]
        return entries

    def read_new(self, count: int, block_ms: int | None = None) -> list[Entry]:
        """Up to ``count`` entries never delivered to the group, waiting up to ``block_ms`` (None: not at all)."""
        return self._xreadgroup(">", count, block_ms)

    def restart_backlog(self) -> None:
        """Read the own pending list again from its start (after a connection error, say)."""
        self.in_backlog, self.cursor = True, "0"

    def _xreadgroup(self, start: EntryId, count: int, block_ms: int | None) -> list[Entry]:
        reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: start}, count=count, block=block_ms)
        return list(reply[0][1]) if reply else []

    def reclaim(self, min_idle_ms: int, count: int = 100) -> Iterator[list[Entry]]:
        """Claim, batch by batch, the group's entries pending longer than ``min_idle_ms`` with any consumer.

        Each batch is this consumer's once yielded (handle and acknowledge it before asking for the next); the
        scan ends after one pass over the pending list. Batches may be empty.
        """
        cursor: EntryId = "0-0"
        while True:
            cursor, entries, *_ = self.client.xautoclaim(self.stream, self.group, self.consumer, min_idle_ms,
                                                         start_id=cursor, count=count)
            yield list(entries)
            if cursor in _DONE:
                return

    # ------------------------------------------------------------------ decoding, dead letters, acks

    def decode(self, entries: Sequence[Entry]) -> tuple[list[tuple[EntryId, T | None]], list[Reject]]:
        """``(items, rejects)``: every entry in order with its decoded value (None when it was deleted while
        pending or the decoder rejected it), and the rejected ones with the reason, for ``dead_letter``."""
        if self.decoder is None:
            raise RuntimeError(f"consumer {self.consumer} of {self.stream} has no decoder")
        items: list[tuple[EntryId, T | None]] = []
        rejects: list[Reject] = []
        for entry_id, fields in entries:
            if fields is None:
                items.append((entry_id, None))
                continue
            try:
                items.append((entry_id, self.decoder(fields)))
            except WireError as e:
                rejects.append((entry_id, fields, str(e)))
                items.append((entry_id, None))
        return items, rejects

    def dead_letter(self, rejects: Sequence[Reject], pipe: Any = None) -> int:
        """Send ``rejects`` to the dead-letter stream (queued on ``pipe`` if given, else written now); how many."""
        if not rejects:
            return 0
        if self.dead_letter_stream is None:
            raise RuntimeError(f"consumer {self.consumer} of {self.stream} has no dead-letter stream")
        own = pipe is None
        if own:
            pipe = self.client.pipeline(transaction=False)
        for entry_id, fields, reason in rejects:
            pipe.xadd(self.dead_letter_stream, {"stream": self.stream, "entry": entry_id, "reason": reason,
                                                "raw": repr(fields)[:2000]})
            self.log.warning(self.dead_letter_log, {"entry": entry_id, "stream": self.stream, "reason": reason,
                                                    "dead_letter": self.dead_letter_stream})
        if own:
            pipe.execute()
        return len(rejects)

    def ack(self, entry_ids: Sequence[EntryId], pipe: Any = None) -> None:
        """Acknowledge ``entry_ids`` (queued on ``pipe`` if given, else now)."""
        if entry_ids:
            (pipe if pipe is not None else self.client).xack(self.stream, self.group, *entry_ids)

    # ------------------------------------------------------------------ trimming

    def trim_acknowledged(self) -> int:
        """Remove the entries every group of the stream has acknowledged, never one that is pending with any
        consumer or not yet delivered: XTRIM MINID at the oldest entry some group still needs (its oldest pending
        entry, else its last delivered one). Safe against concurrent reads: new deliveries and claims only ever
        concern entries at or after that point. Returns how many entries were removed."""
        floor: tuple[int, int] | None = None
        for g in self.client.xinfo_groups(self.stream):
            need = g["last-delivered-id"]
            if int(g["pending"]):
                need = self.client.xpending(self.stream, g["name"])["min"]
            floor = min(floor, _id(need)) if floor is not None else _id(need)
        if floor is None or floor == (0, 0):  # no group yet, or a group that has read nothing
            return 0
        return int(self.client.xtrim(self.stream, minid=f"{floor[0]}-{floor[1]}", approximate=False))

    # ------------------------------------------------------------------ introspection

    def pending(self) -> int:
        """Entries delivered to the group and not acknowledged, over all its consumers."""
        return int(self.client.xpending(self.stream, self.group)["pending"])

    def unacknowledged(self) -> int:
        """Pending entries plus those not yet delivered to the group (its lag); 0 when the group is missing."""
        for g in self.client.xinfo_groups(self.stream):
            if g["name"] in (self.group, self.group.encode()):
                return int(g["pending"]) + int(g.get("lag") or 0)
        return 0


def _id(entry_id: EntryId) -> tuple[int, int]:
    """A stream entry id as (milliseconds, sequence), for ordering."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
