"""The vocabulary every component's config section is written in: a field with a default and a one-line doc,
and range checks that name the field.

A section is a plain dataclass next to its component (``actors/config.py``, ``memory_server/config.py``,
``learner/config.py``); ``__post_init__`` raises ``FieldError`` (a ``ValueError``) naming the field, and the
driver's loader (``cluster/config.py``) prefixes the full key path, e.g. ``memory.k2: must be <= k1 (5), got 9``.

    @dataclass
    class ShardConfig:
        size: int = doc(8, "Entries per shard.")

        def __post_init__(self) -> None:
            positive(self, "size")
"""

from __future__ import annotations

from dataclasses import field
from typing import Any


class FieldError(ValueError):
    """A section's field is out of range; the loader prefixes the field's full key path."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def doc(default: Any, text: str) -> Any:
    """A dataclass field with a default and a one-line doc (lists and dicts are copied per instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


def check(cond: bool, name: str, message: str) -> None:
    """Raise ``FieldError(name, message)`` unless ``cond``."""
    if not cond:
        raise FieldError(name, message)


def non_negative(obj: Any, *names: str) -> None:
    for name in names:
        check(getattr(obj, name) >= 0, name, f"must be >= 0, got {getattr(obj, name)}")


def positive(obj: Any, *names: str) -> None:
    for name in names:
        check(getattr(obj, name) > 0, name, f"must be > 0, got {getattr(obj, name)}")
