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


def test_a_port_taken_before_the_server_binds_it_is_retried(tmp_path: Path, monkeypatch) -> None:
    """free_port() can race another process; the server then starts on the next free port."""
    import socket

    from cluster import services

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    taken = squatter.getsockname()[1]
    ports = iter([taken])
    real = services.free_port
    monkeypatch.setattr(services, "free_port", lambda: next(ports, None) or real())
    server = RedisServer(tmp_path / "r").start()
    try:
        assert server.port != taken and redis.Redis.from_url(server.url).ping()
    finally:
        server.stop()
        squatter.close()


def test_a_quote_in_the_run_path_reaches_the_server_intact(tmp_path: Path) -> None:
    folder = tmp_path / 'run "quoted" \\ dir'
    server = RedisServer(folder, durable=True).start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("dir")["dir"] == str(folder.resolve())
    finally:
        server.stop()
    assert (folder / "server.log").is_file()


def test_run_config_yaml_never_holds_the_redis_password(tmp_path: Path) -> None:
    from cluster.config import build, load
    from cluster.train import make_run_dir

    cfg = build({"redis": {"url": "redis://:s3cret@db.example:6379/0"}, "run": {"output_dir": str(tmp_path)}})
    run_dir = make_run_dir(cfg, "x.yaml")
    text = (run_dir / "config.yaml").read_text()
    assert "s3cret" not in text and "redis://***@db.example:6379/0" in text
    assert load(run_dir / "config.yaml").redis.url == "redis://***@db.example:6379/0"


def test_ray_token_file_is_private_from_creation(tmp_path: Path) -> None:
    import os
    import stat

    from cluster.services import _write_private

    old = os.umask(0)  # the most permissive umask: the file must still never be readable by others
    try:
        _write_private(tmp_path / "auth_token", "t0k3n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "auth_token").stat().st_mode) == 0o600


def test_a_local_run_s_public_listeners_are_ray_s_only(ray_session, tmp_path: Path) -> None:
    """What the README says about listeners: valkey is loopback-only, and every socket a local run's processes
    listen on beyond loopback belongs to Ray itself (Ray 2.60 binds its servers to all interfaces; token auth)."""
    from cluster.services import descendants

    server = RedisServer(tmp_path).start()
    try:
        ours = set(descendants())
        public = []
        for c in psutil.net_connections("tcp"):
            if c.status != "LISTEN" or c.pid not in ours or c.laddr.ip in ("127.0.0.1", "::1"):
                continue
            try:
                cmd = " ".join(psutil.Process(c.pid).cmdline())
            except psutil.NoSuchProcess:
                continue
            public.append((c.laddr.ip, c.laddr.port, cmd[:100]))
        assert public, "no public listener at all: Ray binds loopback now; update the README"
        not_ray = [p for p in public if "ray" not in p[2].lower()]
        assert not not_ray, f"a non-Ray process listens beyond loopback: {not_ray}"
        assert all(c.laddr.ip == "127.0.0.1" for c in psutil.net_connections("tcp")
                   if c.status == "LISTEN" and c.laddr.port == server.port)
    finally:
        server.stop()
