"""Typed wire messages of the memory: records, provenance and reward events, encoded with msgpack.

Owns: the ``MemoryRecord`` / ``Provenance`` / ``RewardEvent`` dataclasses, their msgpack encoding
(arrays travel as bytes + dtype + shape, every message carries ``FORMAT_VERSION`` and a type tag) and
embedding checks. Decoding never unpickles; anything malformed is a ``WireError`` naming the problem.

    blob = encode_record(rec); rec2 = decode_record(blob)            # rec2 == rec
    vec = check_embedding(vec, dim=embedder.dim)                     # EmbeddingError on NaN/inf/shape
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack
import numpy as np

FORMAT_VERSION = 1
Kind = Literal["success", "failure"]
KINDS: tuple[str, ...] = ("success", "failure")
_ARRAY_DTYPES = {"<f4", "<f8", "<i4", "<i8"}  # what may arrive as an array; embeddings must be <f4


class WireError(ValueError):
    """Bytes that are not a valid message of the expected type and version; the message says why."""


class EmbeddingError(ValueError):
    """An embedding that is not a finite 1-D float vector of the expected dimension."""


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
        if not math.isfinite(self.q):
            raise ValueError(f"q must be finite, got {self.q}")
        self.embedding = check_embedding(self.embedding)
        if self.updated_at is None:
            self.updated_at = self.created_at

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
        if not math.isfinite(self.reward):
            raise ValueError(f"reward must be finite, got {self.reward}")


# --------------------------------------------------------------------------- encoding helpers

def encode_array(arr: np.ndarray) -> dict[str, Any]:
    arr = np.ascontiguousarray(arr)
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}


def decode_array(obj: Any) -> np.ndarray:
    if not isinstance(obj, dict):
        raise WireError(f"array: expected a map, got {type(obj).__name__}")
    dtype, shape, data = _get(obj, "dtype", str, "array"), _get(obj, "shape", list, "array"), _get(obj, "data", bytes, "array")
    if dtype not in _ARRAY_DTYPES:
        raise WireError(f"array: dtype {dtype!r} not allowed (allowed: {sorted(_ARRAY_DTYPES)})")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise WireError(f"array: bad shape {shape!r}")
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise WireError(f"array: {len(data)} data bytes for shape {shape} and dtype {dtype} (expected {expected})")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _get(obj: dict, name: str, tp: type | tuple[type, ...], what: str) -> Any:
    try:
        value = obj[name]
    except KeyError:
        raise WireError(f"{what}: missing field {name!r}") from None
    if type(value) is tp:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (isinstance(value, bool) and tp in (int, float)):
        names = tp.__name__ if isinstance(tp, type) else " or ".join(t.__name__ for t in tp)
        raise WireError(f"{what}: field {name!r} must be {names}, got {type(value).__name__}")
    return value


def _str_list(obj: dict, name: str, what: str) -> list[str]:
    value = _get(obj, name, list, what)
    if not all(isinstance(v, str) for v in value):
        raise WireError(f"{what}: field {name!r} must be a list of strings")
    return value


def _pack(type_: str, body: dict[str, Any]) -> bytes:
    return msgpack.packb({"v": FORMAT_VERSION, "type": type_, **body}, use_bin_type=True)


def _unpack(data: bytes, type_: str) -> dict:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"{type_}: expected bytes, got {type(data).__name__}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise WireError(f"{type_}: not a valid msgpack message ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise WireError(f"{type_}: expected a msgpack map, got {type(obj).__name__}")
    version = obj.get("v")
    if version != FORMAT_VERSION:
        raise WireError(f"{type_}: format version {version!r}, this code reads version {FORMAT_VERSION}")
    if obj.get("type") != type_:
        raise WireError(f"expected a {type_!r} message, got type {obj.get('type')!r}")
    return obj


# --------------------------------------------------------------------------- messages

def encode_record(rec: MemoryRecord) -> bytes:
    p = rec.provenance
    return _pack("memory", {
        "id": rec.id, "namespace": rec.namespace, "intent": rec.intent, "embedding": encode_array(rec.embedding),
        "experience": rec.experience, "kind": rec.kind, "q": float(rec.q), "visits": int(rec.visits),
        "last_reward": None if rec.last_reward is None else float(rec.last_reward),
        "created_at": float(rec.created_at), "updated_at": float(rec.updated_at or rec.created_at),
        "provenance": {"episode_id": p.episode_id, "task_id": p.task_id, "env": p.env, "model_id": p.model_id,
                       "adapter_version": int(p.adapter_version), "writer": p.writer,
                       "retrieved_ids": list(p.retrieved_ids)},
    })


def decode_record(data: bytes) -> MemoryRecord:
    obj = _unpack(data, "memory")
    what = "memory"
    pobj = _get(obj, "provenance", dict, what)
    prov = Provenance(
        episode_id=_get(pobj, "episode_id", str, "provenance"), task_id=_get(pobj, "task_id", str, "provenance"),
        env=_get(pobj, "env", str, "provenance"), model_id=_get(pobj, "model_id", str, "provenance"),
        adapter_version=_get(pobj, "adapter_version", int, "provenance"), writer=_get(pobj, "writer", str, "provenance"),
        retrieved_ids=_str_list(pobj, "retrieved_ids", "provenance"))
    embedding = decode_array(_get(obj, "embedding", dict, what))
    if embedding.dtype != np.float32:
        raise WireError(f"memory: embedding dtype must be float32, got {embedding.dtype}")
    last_reward = obj.get("last_reward")
    fields = dict(
        id=_get(obj, "id", str, what), namespace=_get(obj, "namespace", str, what),
        intent=_get(obj, "intent", str, what), embedding=embedding,
        experience=_get(obj, "experience", str, what), kind=_get(obj, "kind", str, what),
        q=_get(obj, "q", float, what), visits=_get(obj, "visits", int, what),
        last_reward=None if last_reward is None else _get(obj, "last_reward", float, what),
        created_at=_get(obj, "created_at", float, what), updated_at=_get(obj, "updated_at", float, what))
    try:
        return MemoryRecord(provenance=prov, **fields)
    except ValueError as e:  # EmbeddingError and __post_init__ checks
        raise WireError(f"memory: {e}") from None


def encode_reward_event(ev: RewardEvent) -> bytes:
    return _pack("reward", {"episode_id": ev.episode_id, "memory_ids": list(ev.memory_ids), "reward": float(ev.reward),
                            "time": float(ev.time), "adapter_version": int(ev.adapter_version),
                            "memory_version": int(ev.memory_version)})


def decode_reward_event(data: bytes) -> RewardEvent:
    obj = _unpack(data, "reward")
    what = "reward"
    fields = dict(episode_id=_get(obj, "episode_id", str, what), memory_ids=_str_list(obj, "memory_ids", what),
                  reward=_get(obj, "reward", float, what), time=_get(obj, "time", float, what),
                  adapter_version=_get(obj, "adapter_version", int, what),
                  memory_version=_get(obj, "memory_version", int, what))
    try:
        return RewardEvent(**fields)
    except ValueError as e:  # __post_init__ checks
        raise WireError(f"reward: {e}") from None
