"""The one rule for namespace names, shared by every Redis key layout (``memory_server/keys.py``,
``learner/keys.py``): 1-128 letters, digits, '_', '.' or '-', so a namespace can sit inside a Redis hash tag.

    check_namespace("quickstart-memrl-s0")     # returns it; "a b" or "" raise ValueError
"""

from __future__ import annotations

import re

_NAMESPACE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


def check_namespace(ns: str) -> str:
    """``ns`` if it is a valid namespace name (letters, digits, '_', '.', '-'), else ValueError."""
    if not isinstance(ns, str) or not _NAMESPACE.match(ns):
        raise ValueError(f"namespace {ns!r}: use 1-128 letters, digits, '_', '.' or '-'")
    return ns
