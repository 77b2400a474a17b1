"""actors/sandbox.py: limits, isolation, bounded output and thread-safety, with real subprocesses."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from actors import sandbox
from actors.sandbox import SandboxLimits, isolation_available, run_python

NAMESPACES = isolation_available() == "namespaces"
SANDBOX_UID = sandbox.NOBODY if os.geteuid() == 0 else os.getuid()
PROJECT = Path(__file__).resolve().parents[2]
SPIN = "while True:\n    pass\n"
# 1 s of CPU takes ~1 s of wall time here; the wall limit only backs it up on a loaded machine.
SPIN_LIMITS = SandboxLimits(cpu_s=1, timeout_s=10)
ALLOCATE_10_GB = "b = bytearray(10 * 1024**3)\n"
FORK_BOMB = "import os\nwhile True:\n    os.fork()\n"
# Keeps trying instead of dying at the process limit, and leaves the process group.
STUBBORN_FORK_BOMB = (
    "import os, time\nwhile True:\n    try:\n        if os.fork() == 0:\n            os.setsid()\n"
    "    except OSError:\n        time.sleep(0.01)\n"
)


@pytest.fixture(autouse=True)
def work_root(monkeypatch: pytest.MonkeyPatch):
    """A private WORK_ROOT per test (not under /tmp, which namespaces hide); every run must clean up."""
    root = Path(tempfile.mkdtemp(prefix="epiq-sandbox-test-", dir=sandbox.WORK_ROOT.parent))
    monkeypatch.setattr(sandbox, "WORK_ROOT", root)
    yield root
    kill_processes_under(root)  # only if a test failed: processes of this test's sandboxes only
    leaked = list(root.iterdir())
    shutil.rmtree(root)
    assert leaked == [], f"work dirs left behind: {leaked}"


def processes_under(root: Path) -> list[psutil.Process]:
    """Live (not zombie) processes whose command line names a file under `root`."""
    return [
        proc
        for proc in psutil.process_iter(["cmdline", "status"])
        if proc.info["status"] != psutil.STATUS_ZOMBIE and str(root) in " ".join(proc.info["cmdline"] or ())
    ]


def live_processes_under(root: Path, wait_s: float = 3.0) -> list[int]:
    """Pids of processes_under(root), after giving killed ones up to `wait_s` to die."""
    deadline = time.monotonic() + wait_s
    while (procs := processes_under(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [proc.pid for proc in procs]


def kill_processes_under(root: Path) -> None:
    stopped: dict[int, psutil.Process] = {}
    for _ in range(50):  # stop them all first, so a fork bomb cannot replace what we kill
        new = [proc for proc in processes_under(root) if proc.pid not in stopped]
        if not new:
            break
        for proc in new:
            with contextlib.suppress(psutil.Error):
                proc.suspend()
            stopped[proc.pid] = proc
    for proc in stopped.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()


def test_passing_program_captures_stdout():
    result = run_python("print('hello', 6 * 7)")
    assert result.ok and result.returncode == 0 and result.reason == ""
    assert result.stdout == "hello 42\n" and result.stderr == ""
    assert result.isolation == isolation_available()


def test_assertion_failure_gives_last_traceback_line():
    result = run_python("def add(a, b):\n    return a - b\n\nassert add(1, 2) == 3, 'add is wrong'\n")
    assert not result.ok and result.returncode == 1
    assert result.reason == "AssertionError: add is wrong"
    assert "Traceback" in result.stderr


def test_name_error_reason():
    result = run_python("print(x)\n")
    assert result.reason == "NameError: name 'x' is not defined"


def test_environment_is_minimal(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EPIQ_TEST_SECRET", "hunter2")
    result = run_python("import os\nprint(sorted(os.environ.items()))\nprint(os.getcwd() == os.environ['HOME'])\n")
    assert result.ok, result.reason
    assert "hunter2" not in result.stdout and "EPIQ_TEST_SECRET" not in result.stdout
    assert result.stdout.endswith("True\n")


def test_wall_timeout_kills_a_sleeping_program():
    result = run_python("import time\ntime.sleep(60)\n", SandboxLimits(timeout_s=1))
    assert not result.ok and result.reason == "timed out after 1 s"
    assert result.seconds < 3


@pytest.mark.slow
def test_infinite_loop_hits_cpu_limit():
    result = run_python(SPIN, SPIN_LIMITS)
    assert not result.ok and result.reason == "CPU time limit (1 s)"
    assert result.seconds < SPIN_LIMITS.timeout_s


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bomb", "isolation"), [(FORK_BOMB, "auto"), (STUBBORN_FORK_BOMB, "auto"), (STUBBORN_FORK_BOMB, "rlimits")]
)
def test_fork_bomb_is_contained_and_cleaned_up(work_root: Path, bomb: str, isolation: str):
    before = os.getpid(), len(psutil.Process().children(recursive=True))
    result = run_python(bomb, SandboxLimits(processes=16, cpu_s=2, timeout_s=2), isolation)
    assert not result.ok and result.returncode is not None
    assert result.isolation == (isolation_available() if isolation == "auto" else isolation)
    assert result.reason.startswith(("process limit (16)", "timed out", "CPU time limit"))
    assert live_processes_under(work_root) == []
    assert (os.getpid(), len(psutil.Process().children(recursive=True))) == before
    assert run_python("print('still fine')").stdout == "still fine\n"


def test_huge_allocation_hits_memory_limit():
    result = run_python(ALLOCATE_10_GB)
    assert not result.ok
    assert result.reason == "memory limit (512 MiB): MemoryError"


def test_writes_outside_the_work_dir_fail(tmp_path: Path):
    if os.geteuid() != 0 and not NAMESPACES:
        pytest.skip("rlimits only and not root: the sandbox keeps our uid, so our files are writable")
    targets = [tmp_path / "escaped.txt", PROJECT / f"sandbox-escape-{os.getpid()}.txt"]
    source = (
        "open('inside.txt', 'w').write('the work dir is writable')\n"
        f"for path in {[str(t) for t in targets]!r}:\n"
        "    try:\n"
        "        open(path, 'w').write('escaped')\n"
        "        print('WROTE', path)\n"
        "    except OSError as exc:\n"
        "        print('blocked', type(exc).__name__)\n"
    )
    try:
        result = run_python(source)
        assert result.ok, result.reason
        assert result.stdout.count("blocked") == 2, result.stdout
        assert not any(t.exists() for t in targets)
    finally:
        targets[1].unlink(missing_ok=True)


@pytest.mark.skipif(not NAMESPACES, reason="namespaces unavailable: /tmp is the host's in rlimits mode")
def test_tmp_is_private_with_namespaces():
    name = f"epiq-sandbox-private-{os.getpid()}"
    result = run_python(f"import os\nopen('/tmp/{name}', 'w').write('x')\nprint(os.getuid(), os.listdir('/tmp'))\n")
    assert result.ok, result.reason
    assert result.stdout == f"{SANDBOX_UID} ['{name}']\n"  # an empty tmpfs, and the code is not root
    assert not Path("/tmp", name).exists()


def test_network_is_blocked():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        source = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n"
        result = run_python(source, SandboxLimits(timeout_s=5))
        if not NAMESPACES:
            pytest.skip("rlimits only: no network namespace, so loopback connections are not blocked")
        assert not result.ok and "connected" not in result.stdout
        assert "OSError" in result.reason or "Error" in result.reason
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody reached the server


def test_huge_output_is_truncated():
    limits = SandboxLimits(output_chars=1000)
    flood = run_python("while True:\n    print('x' * 10**6)\n", limits)
    assert not flood.ok and flood.reason.startswith("file size limit (16 MiB)")
    assert 0 < len(flood.stdout) <= 1000 and set(flood.stdout) <= {"x", "\n"}
    tail = run_python("import sys\nsys.stdout.write('y' * 2_000_000 + 'END')\n", limits)
    assert tail.ok, tail.reason
    assert len(tail.stdout) == 1000 and tail.stdout.endswith("yEND")


def test_concurrent_runs_are_independent():
    sources = [f"import time\ntime.sleep(0.2)\nprint({i} * {i})\n" for i in range(3)] + ["assert False, 'three'\n"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run_python, sources))
    assert [r.stdout for r in results[:3]] == ["0\n", "1\n", "4\n"]
    assert all(r.ok for r in results[:3])
    assert results[3].reason == "AssertionError: three"


@pytest.mark.slow
def test_rlimits_isolation_enforces_cpu_and_memory():
    spin = run_python(SPIN, SPIN_LIMITS, isolation="rlimits")
    assert spin.isolation == "rlimits" and spin.reason == "CPU time limit (1 s)"
    memory = run_python(ALLOCATE_10_GB, isolation="rlimits")
    assert memory.isolation == "rlimits" and memory.reason == "memory limit (512 MiB): MemoryError"


def test_unknown_isolation_raises():
    with pytest.raises(ValueError, match="isolation must be one of"):
        run_python("pass", isolation="docker")


def test_required_namespaces_missing_is_a_failed_result(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sandbox, "isolation_available", lambda: "rlimits")
    result = run_python("print(1)", isolation="namespaces")
    assert not result.ok and result.returncode is None
    assert result.reason.startswith("sandbox error:")


def test_failure_to_start_is_a_sandbox_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sandbox, "PRLIMIT", "/nonexistent/prlimit")
    result = run_python("print(1)")
    assert not result.ok and result.returncode is None
    assert result.reason.startswith("sandbox error: FileNotFoundError")
