"""A stalled Redis server fails a call within the socket timeout instead of hanging it (no server needed: a TCP
listener that accepts and never answers stands in for a stalled one)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis

from common import redis_conn


@pytest.fixture
def silent_server():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # accepted, never answered
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    stop.set()
    thread.join()
    for s in held:
        s.close()
    listener.close()


def test_every_component_client_times_out_on_a_stalled_server(silent_server: str, monkeypatch) -> None:
    from learner.buffer import TrajectoryBuffer
    from memory_server.client import MemoryClient
    from memory_server.config import MemoryConfig

    monkeypatch.setattr(redis_conn, "SOCKET_TIMEOUT_S", 0.3)
    monkeypatch.setattr(redis_conn, "RETRY_ATTEMPTS", 2)  # idempotent calls try again once after 0.25 s
    calls = [lambda: TrajectoryBuffer(silent_server, "t").backlog(),
             lambda: MemoryClient([None], silent_server, MemoryConfig()).feedback_blocking("ep", ["m"], 1.0)]
    for call in calls:
        start = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            call()
        assert time.monotonic() - start < 3  # the project's bound (2 x 0.3 s + 0.25 s here), not a library default
