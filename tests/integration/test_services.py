"""RedisServer: password, loopback only, append-only durability across a restart, stop by PID."""

from __future__ import annotations

from pathlib import Path

import psutil
import redis

from cluster.services import RedisServer


def test_durable_server_keeps_writes_across_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, durable=True, appendfsync="always").start()
    client = redis.Redis.from_url(server.url)
    client.xadd("events", {"n": "1"})
    client.set("k", "v")
    client.close()
    server.kill()  # no clean shutdown: only the AOF can bring the data back
    again = RedisServer(tmp_path, durable=True, port=server.port, password=server.password).start()
    try:
        client = redis.Redis.from_url(again.url)
        assert client.get("k") == b"v" and client.xlen("events") == 1
        client.close()
    finally:
        again.stop()
    assert not psutil.pid_exists(again.pid) or psutil.Process(again.pid).status() == psutil.STATUS_ZOMBIE


def test_server_binds_loopback_only(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    try:
        listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.laddr.port == server.port and c.status == "LISTEN"}
        assert listening == {"127.0.0.1"}
    finally:
        server.stop()
