"""How every component connects to Redis: one constructor with connect and socket timeouts, so a stalled or
unreachable server fails a call with ``redis.TimeoutError`` / ``ConnectionError`` (an episode fails with its
reason, a consumer loop retries) instead of hanging it forever.

    client = connect("redis://:pw@127.0.0.1:6379/0")

``SOCKET_TIMEOUT_S`` must stay above the longest blocking stream read (the learner blocks for 0.5 s). redis-py 8
defaults both to 5 s; they are set here so that the bound is the project's, whatever the library's default.
"""

from __future__ import annotations

import redis

CONNECT_TIMEOUT_S = 5.0  # establishing a connection
SOCKET_TIMEOUT_S = 10.0  # one command's reply (a Lua script over a whole namespace included)


def connect(url: str) -> redis.Redis:
    """A client for ``url`` with ``CONNECT_TIMEOUT_S`` / ``SOCKET_TIMEOUT_S``."""
    return redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S)
