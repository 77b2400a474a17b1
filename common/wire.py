"""The versioned msgpack envelope every typed wire message of epiq travels in, and the checked field readers.

Owns: the envelope (a msgpack map with ``v`` = ``FORMAT_VERSION``, ``type`` = the message's type tag, then the
message's own fields; binary as msgpack bin), numpy arrays on the wire (bytes + dtype + shape, a fixed set of
dtypes, never pickled) and ``WireError``, the one error a decoder raises for bytes that are not a valid message.
The message types themselves live with their owners (``memory_server/records.py``, ``learner/buffer.py``).

    blob = pack("reward", {"episode_id": "ep-1", "scores": encode_array(np.zeros(3, "<f4"))})
    obj = unpack(blob, "reward")                      # WireError: not msgpack, not a map, other version or type
    ep = field_of(obj, "episode_id", str, "reward")   # WireError: missing or of another type
    arr = decode_array(field_of(obj, "scores", dict, "reward"))
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

FORMAT_VERSION = 1  # of the envelope and of every message type in it; a decoder reads exactly this version
ARRAY_DTYPES = frozenset({"<f4", "<f8", "<i4", "<i8"})  # what may arrive as an array


class WireError(ValueError):
    """Bytes that are not a valid message of the expected type and version; the message says why."""


def pack(type_: str, body: dict[str, Any]) -> bytes:
    """``body`` in the envelope of message type ``type_`` (``body`` must not use the keys ``v`` and ``type``)."""
    return msgpack.packb({"v": FORMAT_VERSION, "type": type_, **body}, use_bin_type=True)


def unpack(data: bytes, type_: str) -> dict:
    """The map of a ``type_`` message (envelope keys included), or WireError; never unpickles."""
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


def field_of(obj: dict, name: str, tp: type | tuple[type, ...], what: str) -> Any:
    """``obj[name]`` if it is a ``tp`` (an int is accepted as a float, a bool never as a number), else WireError.

    ``what`` names the message or sub-map in the error (``"memory: missing field 'q'"``).
    """
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


def str_list_of(obj: dict, name: str, what: str) -> list[str]:
    """``obj[name]`` if it is a list of strings, else WireError."""
    value = field_of(obj, name, list, what)
    if not all(isinstance(v, str) for v in value):
        raise WireError(f"{what}: field {name!r} must be a list of strings")
    return value


def encode_array(arr: np.ndarray) -> dict[str, Any]:
    """``arr`` as a wire map: dtype string, shape, C-order bytes."""
    arr = np.ascontiguousarray(arr)
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}


def decode_array(obj: Any) -> np.ndarray:
    """The array of a wire map (read-only, a view of the bytes), or WireError (dtype not allowed, bad shape/size)."""
    if not isinstance(obj, dict):
        raise WireError(f"array: expected a map, got {type(obj).__name__}")
    dtype, shape = field_of(obj, "dtype", str, "array"), field_of(obj, "shape", list, "array")
    data = field_of(obj, "data", bytes, "array")
    if dtype not in ARRAY_DTYPES:
        raise WireError(f"array: dtype {dtype!r} not allowed (allowed: {sorted(ARRAY_DTYPES)})")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise WireError(f"array: bad shape {shape!r}")
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise WireError(f"array: {len(data)} data bytes for shape {shape} and dtype {dtype} (expected {expected})")
    return np.frombuffer(data, dtype=dtype).reshape(shape)
