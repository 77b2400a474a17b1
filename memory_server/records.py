"""Typed wire messages of the memory: records, provenance and reward events, encoded with msgpack.

Owns: the ``MemoryRecord`` / ``Provenance`` / ``RewardEvent`` dataclasses, their msgpack encoding and
embedding checks. The envelope (``FORMAT_VERSION`` and a type tag on every message, arrays as bytes + dtype +
shape) and ``WireError`` are ``common.wire``'s, re-exported here. Decoding never unpickles; anything malformed
is a ``WireError`` naming the problem.

    blob = encode_record(rec); rec2 = decode_record(blob)            # rec2 == rec
    vec = check_embedding(vec, dim=embedder.dim)                     # EmbeddingError on NaN/inf/shape
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from common.wire import FORMAT_VERSION, WireError, decode_array, encode_array, field_of, pack, str_list_of, unpack
from memory_server.config import MAX_REWARD

__all__ = ["FORMAT_VERSION", "KINDS", "EmbeddingError", "Kind", "MemoryRecord", "Provenance", "RewardEvent", "WireError",
           "check_embedding", "decode_array", "decode_record", "decode_reward_event", "encode_array", "encode_record",
           "encode_reward_event"]  # FORMAT_VERSION, WireError and the array helpers are common.wire's, re-exported

Kind = Literal["success", "failure"]
KINDS: tuple[str, ...] = ("success", "failure")


class EmbeddingError(ValueError):
    """An embedding that is not a finite 1-D float vector of the expected dimension."""


UNIT_NORM_TOL = 1e-3  # stored embeddings and index vectors: cosine is an inner product of unit vectors


def check_unit_norm(vec: np.ndarray, what: str = "embedding") -> None:
    """EmbeddingError unless ``vec`` has L2 norm 1 (within ``UNIT_NORM_TOL``)."""
    norm = float(np.linalg.norm(vec))
    if not abs(norm - 1.0) <= UNIT_NORM_TOL:
        raise EmbeddingError(f"{what} has L2 norm {norm:.4f}; memories are stored L2-normalised (norm 1)")


def _check_number(name: str, value: Any, bound: float | None = None) -> None:
    """ValueError unless ``value`` is a finite real number (within ±``bound`` when given)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if bound is not None and abs(value) > bound:
        raise ValueError(f"{name} must be within ±{bound:g}, got {value!r}")


def check_record_numbers(rec: MemoryRecord) -> None:
    """ValueError naming the field unless Q, visits, last reward and the timestamps are sane numbers."""
    _check_number("q", rec.q, MAX_REWARD)  # a Q is a running average of rewards
    if isinstance(rec.visits, bool) or not isinstance(rec.visits, int) or rec.visits < 0:
        raise ValueError(f"visits must be an integer >= 0, got {rec.visits!r}")
    if rec.last_reward is not None:
        _check_number("last_reward", rec.last_reward, MAX_REWARD)
    _check_number("created_at", rec.created_at)
    _check_number("updated_at", rec.updated_at)


def check_embedding(vec: Any, dim: int | None = None) -> np.ndarray:
    """``vec`` as a contiguous float32 1-D array, or EmbeddingError (NaN/inf, wrong ndim or dimension).

    The embedder already L2-normalises; this only checks. ``dim=None`` skips the dimension check.
    """
    if type(vec) is np.ndarray and vec.dtype == np.float32 and vec.ndim == 1 and vec.flags.c_contiguous \
            and vec.shape[0] > 0 and (dim is None or vec.shape[0] == dim) and np.isfinite(vec).all():
        return vec  # the common case, checked without copies
    try:
        arr = np.asarray(vec)
    except ValueError as e:  # ragged nested lists
        raise EmbeddingError(f"embedding is not an array: {e}") from None
    if arr.dtype.kind not in "fiu":
        raise EmbeddingError(f"embedding must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise EmbeddingError(f"embedding must be 1-D, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise EmbeddingError("embedding is empty")
    if dim is not None and arr.shape[0] != dim:
        raise EmbeddingError(f"embedding has dimension {arr.shape[0]}, expected {dim} (the embedder's)")
    with np.errstate(over="ignore"):  # values too large for float32 become inf and are reported below
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise EmbeddingError(f"embedding has {bad} NaN/inf value(s) (after conversion to float32)")
    return arr


@dataclass
class Provenance:
    """Where a memory came from: the episode that wrote it and what that episode ran with."""

    episode_id: str
    task_id: str
    env: str
    model_id: str
    adapter_version: int
    writer: str
    retrieved_ids: list[str] = field(default_factory=list)


@dataclass(kw_only=True, eq=False)
class MemoryRecord:
    """One episodic memory. ``q``/``visits``/``last_reward``/``updated_at`` change; the rest never does."""

    namespace: str
    intent: str
    embedding: np.ndarray
    experience: str
    kind: Kind
    provenance: Provenance
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    q: float = 0.0
    visits: int = 0
    last_reward: float | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float | None = None  # None: same as created_at

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not self.id or not isinstance(self.id, str):
            raise ValueError(f"id must be a non-empty string, got {self.id!r}")
        self.embedding = check_embedding(self.embedding)
        if self.updated_at is None:
            self.updated_at = self.created_at
        check_record_numbers(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MemoryRecord):
            return NotImplemented
        names = ("id", "namespace", "intent", "experience", "kind", "q", "visits", "last_reward",
                 "created_at", "updated_at", "provenance")
        return all(getattr(self, n) == getattr(other, n) for n in names) and \
            self.embedding.dtype == other.embedding.dtype and np.array_equal(self.embedding, other.embedding)


@dataclass
class RewardEvent:
    """An episode's reward for the memories injected into it (applied once per (episode, memory))."""

    episode_id: str
    memory_ids: list[str]
    reward: float
    time: float
    adapter_version: int
    memory_version: int  # memory writes the episode saw; carried, not interpreted

    def __post_init__(self) -> None:
        if not self.episode_id:
            raise ValueError("episode_id must be a non-empty string")
        _check_number("reward", self.reward, MAX_REWARD)


# --------------------------------------------------------------------------- messages

def encode_record(rec: MemoryRecord) -> bytes:
    p = rec.provenance
    return pack("memory", {
        "id": rec.id, "namespace": rec.namespace, "intent": rec.intent, "embedding": encode_array(rec.embedding),
        "experience": rec.experience, "kind": rec.kind, "q": float(rec.q), "visits": int(rec.visits),
        "last_reward": None if rec.last_reward is None else float(rec.last_reward),
        "created_at": float(rec.created_at), "updated_at": float(rec.updated_at or rec.created_at),
        "provenance": {"episode_id": p.episode_id, "task_id": p.task_id, "env": p.env, "model_id": p.model_id,
                       "adapter_version": int(p.adapter_version), "writer": p.writer,
                       "retrieved_ids": list(p.retrieved_ids)},
    })


def decode_record(data: bytes) -> MemoryRecord:
    obj = unpack(data, "memory")
    what = "memory"
    pobj = field_of(obj, "provenance", dict, what)
    pw = "provenance"
    prov = Provenance(
        episode_id=field_of(pobj, "episode_id", str, pw), task_id=field_of(pobj, "task_id", str, pw),
        env=field_of(pobj, "env", str, pw), model_id=field_of(pobj, "model_id", str, pw),
        adapter_version=field_of(pobj, "adapter_version", int, pw), writer=field_of(pobj, "writer", str, pw),
        retrieved_ids=str_list_of(pobj, "retrieved_ids", pw))
    embedding = decode_array(field_of(obj, "embedding", dict, what))
    if embedding.dtype != np.float32:
        raise WireError(f"memory: embedding dtype must be float32, got {embedding.dtype}")
    last_reward = obj.get("last_reward")
    fields = dict(
        id=field_of(obj, "id", str, what), namespace=field_of(obj, "namespace", str, what),
        intent=field_of(obj, "intent", str, what), embedding=embedding,
        experience=field_of(obj, "experience", str, what), kind=field_of(obj, "kind", str, what),
        q=field_of(obj, "q", float, what), visits=field_of(obj, "visits", int, what),
        last_reward=None if last_reward is None else field_of(obj, "last_reward", float, what),
        created_at=field_of(obj, "created_at", float, what), updated_at=field_of(obj, "updated_at", float, what))
    try:
        return MemoryRecord(provenance=prov, **fields)
    except ValueError as e:  # EmbeddingError and __post_init__ checks
        raise WireError(f"memory: {e}") from None


def encode_reward_event(ev: RewardEvent) -> bytes:
    return pack("reward", {"episode_id": ev.episode_id, "memory_ids": list(ev.memory_ids), "reward": float(ev.reward),
                           "time": float(ev.time), "adapter_version": int(ev.adapter_version),
                           "memory_version": int(ev.memory_version)})


def decode_reward_event(data: bytes) -> RewardEvent:
    obj = unpack(data, "reward")
    what = "reward"
    fields = dict(episode_id=field_of(obj, "episode_id", str, what), memory_ids=str_list_of(obj, "memory_ids", what),
                  reward=field_of(obj, "reward", float, what), time=field_of(obj, "time", float, what),
                  adapter_version=field_of(obj, "adapter_version", int, what),
                  memory_version=field_of(obj, "memory_version", int, what))
    try:
        return RewardEvent(**fields)
    except ValueError as e:  # __post_init__ checks
        raise WireError(f"reward: {e}") from None
