"""How every component connects to Redis: one constructor with connect and socket timeouts, so a stalled or
unreachable server fails a call with ``redis.TimeoutError`` / ``ConnectionError`` (an episode fails with its
reason, a consumer loop retries) instead of hanging it forever.

    client = connect("redis://:pw@127.0.0.1:6379/0")
    retry_idempotent(lambda: client.xadd(stream, fields), "reward event")   # survives a server restart

``SOCKET_TIMEOUT_S`` must stay above the longest blocking stream read (the learner blocks for 0.5 s). redis-py 8
defaults both to 5 s; they are set here so that the bound is the project's, whatever the library's default.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0  # establishing a connection
SOCKET_TIMEOUT_S = 10.0  # one command's reply (a Lua script over a whole namespace included)


def connect(url: str) -> redis.Redis:
    """A client for ``url`` with ``CONNECT_TIMEOUT_S`` / ``SOCKET_TIMEOUT_S``."""
    return redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S)


RETRY_ATTEMPTS = 6  # ~0.25 + 0.5 + 1 + 2 + 4 s of backoff: covers a server restarting on its append-only file
T = TypeVar("T")


def retry_idempotent(call: Callable[[], T], what: str = "redis call") -> T:
    """Run ``call`` again after a lost connection or a timeout, with exponential backoff. Only for calls whose
    repetition has no further effect (reads; reward events, which the store applies once per (episode, memory);
    adds keyed by the memory id): a reply lost after the server applied the command is then harmless."""
    for attempt in range(RETRY_ATTEMPTS):
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError) as e:
            if attempt == RETRY_ATTEMPTS - 1:
                raise
            delay = 0.25 * 2 ** attempt
            log.warning("%s: %s: %s; retrying in %.2f s", what, type(e).__name__, e, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
