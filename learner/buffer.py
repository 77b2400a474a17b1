"""The trajectory buffer: rollouts append finished episodes to a Redis stream, the learner consumes them exactly once.

Owns: the typed wire message of one trajectory (``TrainTrajectory`` / ``TrainTurn``; msgpack, a format version,
token ids and behaviour logprobs as bytes + dtype + shape), ``TrajectoryBuffer.put`` (what rollout code calls),
and the learner's side: reading through a consumer group (``common.streams.StreamConsumer``: its own
un-acknowledged entries first after a restart), skipping episodes already trained on, dead-lettering malformed
entries, and ``commit`` — the Lua script that marks
a checkpointed step's episodes as trained and acknowledges its entries in one atomic call.

Exactly-once: an entry is acknowledged only by ``commit``, which the learner calls after a checkpoint covering the
step was written (the checkpoint also records the commit, replayed on resume: ``COMMIT_STEP`` is idempotent per
step). A learner that dies before its checkpoint re-reads the entries from its pending list and trains on them
from the previous checkpoint's weights; one that dies after it finds them acknowledged. Episode ids already in
the trained set (a re-dispatched episode put twice) are skipped at read time.

    buf = TrajectoryBuffer(redis_url, "run-1"); buf.put(traj)            # rollout side, sync and cheap
    batch = buf.read(16, block_ms=100)                                  # learner side: [(entry_id, TrainTrajectory)]
    buf.commit(step=1, version=1, episode_ids=[...], entry_ids=[...])    # after the checkpoint
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from common.redis_conn import connect, retry_idempotent
from common.streams import StreamConsumer, field_decoder
from common.wire import WireError, decode_array, encode_array, field_of, pack, unpack
from learner import keys

log = logging.getLogger(__name__)

CONSUMER = "learner"  # stable: a restarted learner re-reads its own pending entries first


def _str(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


@dataclass
class TrainTurn:
    """One LLM call as the learner sees it: what was generated, how likely the engine found it, under which version."""

    prompt_ids: list[int]
    output_ids: list[int]
    logprobs: list[float]  # behaviour policy: the engine's log-probability of each output token
    adapter_version: int


@dataclass
class TrainTrajectory:
    """One finished episode on the wire between rollouts and the learner."""

    episode_id: str
    task_id: str
    epoch: int
    seed: int
    reward: float
    turns: list[TrainTurn] = field(default_factory=list)
    memories_shown: int = 0  # memories injected into the episode's prompts (``learner.memory_guided``)

    def __post_init__(self) -> None:
        if not self.episode_id:
            raise ValueError("episode_id must be a non-empty string")
        if not math.isfinite(self.reward):
            raise ValueError(f"reward must be finite, got {self.reward}")
        if not self.turns:
            raise ValueError("a trajectory needs at least one turn")
        for i, t in enumerate(self.turns):
            if not t.output_ids:
                raise ValueError(f"turn {i} has no output tokens")
            if len(t.logprobs) != len(t.output_ids):
                raise ValueError(f"turn {i}: {len(t.logprobs)} logprobs for {len(t.output_ids)} output tokens")
            if not all(math.isfinite(x) and x <= 1e-6 for x in t.logprobs):
                raise ValueError(f"turn {i}: logprobs must be finite and <= 0")
            if t.adapter_version < 0:
                raise ValueError(f"turn {i}: adapter version {t.adapter_version} < 0")
        if self.memories_shown < 0:
            raise ValueError(f"memories_shown must be >= 0, got {self.memories_shown}")

    @property
    def version(self) -> int:
        """The oldest adapter version that produced any of its tokens (what staleness is measured from)."""
        return min(t.adapter_version for t in self.turns)

    @classmethod
    def from_trajectory(cls, traj: Any) -> TrainTrajectory:
        """From an ``actors.agent.Trajectory`` (turns whose output is empty are left out: nothing to train on)."""
        turns = [TrainTurn(list(t.prompt_ids), list(t.output_ids), list(t.logprobs), int(t.adapter_version))
                 for t in traj.turns if t.output_ids]
        return cls(traj.episode_id, traj.task_id, int(traj.epoch), int(traj.seed), float(traj.reward), turns,
                   len(getattr(traj, "retrieved_ids", None) or []))


def encode_trajectory(t: TrainTrajectory) -> bytes:
    turns = [{"prompt": encode_array(np.asarray(x.prompt_ids, dtype="<i4")),
              "output": encode_array(np.asarray(x.output_ids, dtype="<i4")),
              "logprobs": encode_array(np.asarray(x.logprobs, dtype="<f8")),
              "version": int(x.adapter_version)} for x in t.turns]
    return pack("trajectory", {"episode_id": t.episode_id, "task_id": t.task_id, "epoch": int(t.epoch),
                                "seed": int(t.seed), "reward": float(t.reward), "turns": turns,
                                "shown": int(t.memories_shown)})


def _ids(obj: dict, name: str, what: str) -> list[int]:
    arr = decode_array(field_of(obj, name, dict, what))
    if arr.dtype.str != "<i4" or arr.ndim != 1:
        raise WireError(f"{what}: {name} must be a 1-D <i4 array, got {arr.dtype.str} shape {arr.shape}")
    return arr.tolist()


def decode_trajectory(data: bytes) -> TrainTrajectory:
    """The trajectory in ``data``, or WireError naming what is wrong (never unpickles)."""
    what = "trajectory"
    obj = unpack(data, what)  # the envelope (bytes, msgpack map, format version, type) as for memory records
    turns = []
    for i, tobj in enumerate(field_of(obj, "turns", list, what)):
        if not isinstance(tobj, dict):
            raise WireError(f"{what}: turn {i} is not a map")
        lp = decode_array(field_of(tobj, "logprobs", dict, f"turn {i}"))
        if lp.dtype.str != "<f8" or lp.ndim != 1:
            raise WireError(f"turn {i}: logprobs must be a 1-D <f8 array")
        turns.append(TrainTurn(_ids(tobj, "prompt", f"turn {i}"), _ids(tobj, "output", f"turn {i}"), lp.tolist(),
                               field_of(tobj, "version", int, f"turn {i}")))
    shown = field_of(obj, "shown", int, what) if "shown" in obj else 0  # absent in entries written before it
    try:
        return TrainTrajectory(field_of(obj, "episode_id", str, what), field_of(obj, "task_id", str, what),
                               field_of(obj, "epoch", int, what), field_of(obj, "seed", int, what),
                               field_of(obj, "reward", float, what), turns, shown)
    except ValueError as e:  # __post_init__ checks
        raise WireError(f"{what}: {e}") from None


class TrajectoryBuffer:
    """Both ends of the trajectory stream of one namespace. Cheap to construct; one Redis connection pool."""

    def __init__(self, redis_url: str, namespace: str, maxlen: int | None = None) -> None:
        self.client = connect(redis_url)
        self.namespace = keys.check_namespace(namespace)
        self.stream = keys.trajectory_stream(namespace)
        self.dead_letter = keys.learner_dead_letter_stream(namespace)
        self.trained = keys.trained_set(namespace)
        self.meta = keys.learner_meta(namespace)
        self.maxlen = maxlen  # None: never trim (trimming could drop entries the learner has not read)
        self._commit = self.client.register_script(keys.COMMIT_STEP)
        # The learner's side of the stream; its own pending entries (from before a restart) come first, each once:
        # the backlog read moves past what it returned (entries held, not yet committed, stay pending).
        # Entries are acknowledged by ``commit`` (COMMIT_STEP), not by the reader.
        self.reader: StreamConsumer[TrainTrajectory] = StreamConsumer(
            self.client, self.stream, keys.LEARNER_GROUP, CONSUMER, decode=field_decoder("t", decode_trajectory),
            dead_letter=self.dead_letter, logger=log, advance_cursor=True,
            dead_letter_log="trajectory entry %(entry)s is malformed (%(reason)s): sent to %(dead_letter)s")
        self.stats = {"read": 0, "duplicate": 0, "dead_letter": 0, "trimmed": 0}

    # ------------------------------------------------------------------ rollout side

    def put(self, traj: Any) -> str | None:
        """Append a finished ``actors.agent.Trajectory`` (or a ``TrainTrajectory``); returns the entry id.

        Episodes that failed (``error`` set) or produced no tokens are not training data: returns None.
        """
        if getattr(traj, "error", None):
            return None
        if not isinstance(traj, TrainTrajectory):
            if not any(t.output_ids for t in traj.turns):
                return None
            traj = TrainTrajectory.from_trajectory(traj)
        kwargs = {"maxlen": self.maxlen, "approximate": True} if self.maxlen else {}
        blob = encode_trajectory(traj)  # sent again after a lost connection: the learner trains an episode once
        entry = retry_idempotent(lambda: self.client.xadd(self.stream, {"t": blob}, **kwargs), "trajectory")
        return entry.decode() if isinstance(entry, bytes) else entry

    # ------------------------------------------------------------------ learner side

    def ensure_group(self) -> None:
        """Create the learner's consumer group (and the stream) unless it exists."""
        self.reader.ensure_group()

    def read(self, count: int, block_ms: int | None = None,
             skip: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, TrainTrajectory | None]]:
        """Up to ``count`` entries: own pending first (after a restart), then new ones, waiting up to ``block_ms``.

        Returns ``(entry_id, trajectory)``; the trajectory is None for an entry that must not be trained on
        (malformed -> dead letter; episode already trained, or in ``skip``) but still has to be acknowledged
        by the next ``commit``.
        """
        self.reader.ensure_group()
        # The backlog ends with the first short read; the same call then tops the batch up with new entries.
        entries = [(_str(e), f) for e, f in self.reader.read(count, block_ms)]
        items, dead = self.reader.decode(entries)  # deleted while pending or malformed: None
        out: list[tuple[str, TrainTrajectory | None]] = [(_str(e), t) for e, t in items]
        self.stats["dead_letter"] += self.reader.dead_letter(dead)
        good = [(i, t) for i, t in out if t is not None]
        if good:
            seen = self.client.smismember(self.trained, [t.episode_id for _, t in good])
            taken = {t.episode_id for (_, t), s in zip(good, seen) if s} | set(skip)  # trained, or held already
            kept: list[tuple[str, TrainTrajectory | None]] = []
            for i, t in out:
                if t is not None and t.episode_id in taken:  # trained, held, or earlier in this read: ack only
                    self.stats["duplicate"] += 1
                    t = None
                elif t is not None:
                    taken.add(t.episode_id)
                kept.append((i, t))
            out = kept
        self.stats["read"] += len(out)
        return out

    def commit(self, step: int, version: int, episode_ids: list[str], entry_ids: list[str], stale: int = 0) -> dict:
        """Mark ``episode_ids`` trained by ``step`` and acknowledge ``entry_ids``, atomically; idempotent per step."""
        new, dup, committed = self._commit(
            keys=[self.stream, self.trained, keys.learner_commits_stream(self.namespace), self.meta],
            args=[keys.LEARNER_GROUP, int(step), int(version), msgpack.packb(list(episode_ids), use_bin_type=False),
                  msgpack.packb(list(entry_ids), use_bin_type=False), int(stale)])
        self.stats["trimmed"] += self.reader.trim_acknowledged()  # acknowledged trajectories are history: drop them
        return {"new": int(new), "duplicates": int(dup), "committed": bool(committed)}

    # ------------------------------------------------------------------ introspection

    def committed(self) -> dict[str, int]:
        """committed_step, version, trained, duplicates, stale (0 when nothing was committed)."""
        raw = self.client.hgetall(self.meta)
        out = {k.decode(): int(v) for k, v in raw.items()}
        return {"committed_step": out.get("committed_step", -1), "version": out.get("version", 0),
                **{k: out.get(k, 0) for k in ("trained", "duplicates", "stale")}}

    def commit_log(self) -> list[dict]:
        """Every committed step: step, version, episodes, stale (oldest first)."""
        rows = self.client.xrange(keys.learner_commits_stream(self.namespace))
        return [{"step": int(f[b"step"]), "version": int(f[b"version"]), "stale": int(f[b"stale"]),
                 "episodes": msgpack.unpackb(f[b"episodes"], raw=False)} for _, f in rows]

    def backlog(self) -> int:
        """Entries not yet acknowledged: pending with the learner plus not yet read (the admission signal)."""
        self.reader.ensure_group()
        return self.reader.unacknowledged()

    def dead_letters(self) -> list[dict]:
        return [{k.decode(): v.decode(errors="replace") for k, v in f.items()}
                for _, f in self.client.xrange(self.dead_letter)]

    def close(self) -> None:
        self.client.close()
