"""Run untrusted Python (model-written code plus its unit tests) in a separate, limited process.

This module owns code execution: `run_python(source)` writes `source` to a fresh work dir, runs
`python -I -B` on it in a new session with a minimal env under limits, kills the whole process group
afterwards and returns a `SandboxResult` with a one-line `reason`. It never raises for anything the
code does ("sandbox error: ..." when the sandbox itself fails) and is safe to call from many threads.

    result = run_python("assert add(1, 2) == 3", SandboxLimits(timeout_s=5))

Isolation (`isolation_available()` probes once whether namespaces work):
- "rlimits": `prlimit` sets RLIMIT_CPU/AS/FSIZE/NPROC/NOFILE and CORE=0. As root the code runs as
  nobody (65534, no groups), so file permissions keep it out of root's files, but world-writable
  dirs and the network stay reachable. Not as root it keeps our uid (and can write our files);
  RLIMIT_NPROC, which counts all of a uid's tasks, is then our current task count + `processes`.
- "namespaces": also unprivileged user/mount/net/pid namespaces entered after the uid drop: no
  network, all processes die with the namespace, / is read-only except the work dir, /tmp and
  /dev/shm are private tmpfs; a nested user namespace keeps the code from being namespace-root.

Work dirs live under WORK_ROOT (env EPIQ_SANDBOX_DIR, default /var/tmp/epiq-sandbox-<uid>, mode
0711), not under /tmp, which namespaces hide. Runs share uid 65534, so a concurrent fork bomb can
briefly use up another run's process budget. If uid 65534 cannot run our interpreter (pyenv under a
0700 /root), /usr/bin/python3 is used.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

log = logging.getLogger(__name__)

NOBODY = 65534
UNSHARE = "/usr/bin/unshare"
PRLIMIT = "/usr/bin/prlimit"
WORK_ROOT = Path(os.environ.get("EPIQ_SANDBOX_DIR", f"/var/tmp/epiq-sandbox-{os.getuid()}"))
MAX_REASON_CHARS = 300
OPEN_FILES = 128
_MARKER = "EPIQ_SANDBOX_RUN"  # env var naming the run, to find processes that left the process group
_ISOLATIONS = ("auto", "namespaces", "rlimits")

# Runs as namespace-root in the new namespaces: $1 work dir, $2 tmpfs size, then the command. The
# shell stays as pid 1 (an init ignores SIGXCPU) and exits 128 + N when the code dies of signal N.
_NS_SETUP = (
    'set -e; work="$1"; size="$2"; shift 2; '
    'mount --bind "$work" "$work"; mount -o remount,bind,ro /; '
    'mount -t tmpfs -o "size=$size,nosuid,nodev,mode=1777" tmpfs /tmp; '
    'mount -t tmpfs -o "size=$size,nosuid,nodev,mode=1777" tmpfs /dev/shm; '
    'cd "$work"; "$@"'
)


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock for the whole run
    cpu_s: int = 5  # RLIMIT_CPU: SIGXCPU at cpu_s, SIGKILL a second later
    memory_mb: int = 512  # RLIMIT_AS
    file_mb: int = 16  # RLIMIT_FSIZE, also bounds captured stdout / stderr
    processes: int = 32  # RLIMIT_NPROC budget
    output_chars: int = 4000  # tail of stdout / stderr kept


@dataclass
class SandboxResult:
    ok: bool  # exit code 0, no limit hit
    returncode: int | None  # negative: killed by that signal (namespaces: also exit codes > 128); None: never ran
    reason: str  # "" when ok, else one line
    stdout: str
    stderr: str
    seconds: float
    isolation: str  # "namespaces" | "rlimits"


_lock = threading.Lock()
_probed: str | None = None
_warned = False


def isolation_available() -> str:
    """'namespaces' if the namespace sandbox works on this machine (probed once), else 'rlimits'."""
    global _probed
    with _lock:
        if _probed is None:
            probe = _run("print('ok')", SandboxLimits(), "namespaces")
            _probed = "namespaces" if probe.ok and probe.stdout == "ok\n" else "rlimits"
            if _probed == "rlimits":
                log.info("namespace sandbox unavailable: %s", probe.reason or probe.stderr[-300:])
        return _probed


def run_python(source: str, limits: SandboxLimits = SandboxLimits(), isolation: str = "auto") -> SandboxResult:
    """Run `source` as a Python program in the sandbox; see the module docstring."""
    global _warned
    if isolation not in _ISOLATIONS:
        raise ValueError(f"isolation must be one of {_ISOLATIONS}, got {isolation!r}")
    mode = "rlimits" if isolation == "rlimits" else isolation_available()
    if isolation == "namespaces" and mode != "namespaces":
        return _failed("sandbox error: namespace isolation is not available on this machine", "namespaces", 0.0)
    if isolation == "auto" and mode == "rlimits" and not _warned:
        _warned = True
        log.warning("sandbox: namespaces unavailable, untrusted code runs with resource limits only")
    return _run(source, limits, mode)


def _run(source: str, limits: SandboxLimits, isolation: str) -> SandboxResult:
    start = time.monotonic()
    work = None
    try:
        work = _make_workdir(isolation)
        return _execute(source, limits, isolation, work, start)
    except Exception as exc:  # the sandbox itself failed; the code's own failures never raise
        return _failed(f"sandbox error: {type(exc).__name__}: {exc}", isolation, time.monotonic() - start)
    finally:
        if work is not None:
            _remove(work)


def _execute(source: str, limits: SandboxLimits, isolation: str, work: Path, start: float) -> SandboxResult:
    script = work / "main.py"
    script.write_text(source, encoding="utf-8")
    as_root = os.geteuid() == 0
    uid, gid = (NOBODY, NOBODY) if as_root else (os.getuid(), os.getgid())
    cmd = [_python(), "-I", "-B", str(script)]
    if isolation == "namespaces":
        inner = [UNSHARE, "--user", f"--map-user={uid}", f"--map-group={gid}", "--", *cmd]
        cmd = [UNSHARE, "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork", "--kill-child",
               "--mount-proc", "--", "/bin/sh", "-c", _NS_SETUP, "sh", str(work), f"{4 * limits.file_mb}m", *inner]
    mib = 1024 * 1024
    cmd = [PRLIMIT, f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}", f"--as={limits.memory_mb * mib}",
           f"--fsize={limits.file_mb * mib}", f"--nproc={_nproc_limit(limits, as_root)}",
           f"--nofile={OPEN_FILES}", "--core=0", "--", *cmd]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work), _MARKER: work.name}
    drop = {"user": uid, "group": gid, "extra_groups": []} if as_root else {}
    # Output goes to unlinked files outside the work dir: bounded by RLIMIT_FSIZE, and the code
    # cannot swap them for a symlink to something we would then read back.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True, **drop)
        status, cpu, timed_out = _wait(proc, limits.timeout_s)
        if isolation == "rlimits":
            _kill_stragglers(work.name, uid)
        stdout, stderr = _tail(out, limits.output_chars), _tail(err, limits.output_chars)
    returncode = os.waitstatus_to_exitcode(status)
    if isolation == "namespaces" and returncode > 128:  # see _NS_SETUP
        returncode = 128 - returncode
    reason = _one_line(_reason(returncode, stderr, cpu, timed_out, limits))
    return SandboxResult(not reason, returncode, reason, stdout, stderr, time.monotonic() - start, isolation)


def _wait(proc: subprocess.Popen, timeout_s: float) -> tuple[int, float, bool]:
    """Wait for the child, SIGKILL its whole process group, reap it: (wait status, CPU s, timed out)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.002
    timed_out = False
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            timed_out = True
            break
        time.sleep(delay)
        delay = min(2 * delay, 0.05)
    try:  # the leader is not reaped yet, so this group id cannot belong to anyone else
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # tell Popen it has been reaped
    return status, usage.ru_utime + usage.ru_stime, timed_out


def _reason(returncode: int, stderr: str, cpu: float, timed_out: bool, limits: SandboxLimits) -> str:
    if timed_out:
        return f"timed out after {limits.timeout_s:g} s"
    if returncode == 0:
        return ""
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    if returncode == -signal.SIGXCPU or cpu >= limits.cpu_s:  # CPU from rusage, incl. reaped children
        return f"CPU time limit ({limits.cpu_s} s)"
    if "MemoryError" in stderr:
        return f"memory limit ({limits.memory_mb} MiB): {last}"
    if "File too large" in last:
        return f"file size limit ({limits.file_mb} MiB): {last}"
    if last.startswith("BlockingIOError") and "fork" in stderr:
        return f"process limit ({limits.processes}): {last}"
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:  # a real-time signal has no name
            return f"killed by signal {-returncode}"
    return last or f"exit code {returncode}"


def _make_workdir(isolation: str) -> Path:
    WORK_ROOT.mkdir(mode=0o711, parents=True, exist_ok=True)
    info = WORK_ROOT.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise OSError(f"{WORK_ROOT} must be a directory owned by uid {os.geteuid()}, not group/world-writable")
    os.chmod(WORK_ROOT, 0o711)  # the sandbox uid may enter its own dir but not list the others
    root = WORK_ROOT.resolve()
    if isolation == "namespaces" and any(root.is_relative_to(p) for p in ("/tmp", "/dev/shm")):
        raise OSError(f"work dir root {root} is hidden by the private /tmp; set EPIQ_SANDBOX_DIR elsewhere")
    work = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    if os.geteuid() == 0:
        os.chown(work, NOBODY, NOBODY)
    return work


def _remove(work: Path) -> None:
    if os.geteuid() != 0:  # the code may have left dirs its owner cannot enter; root enters anything
        os.chmod(work, 0o700)
        for dirpath, dirnames, _ in os.walk(work):
            for name in dirnames:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o700)
    shutil.rmtree(work, ignore_errors=True)


@functools.cache
def _python() -> str:
    """An interpreter the sandbox uid can run: ours if possible, else the system python3."""
    if os.geteuid() != 0:
        return sys.executable
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            probe = subprocess.run([candidate, "-I", "-c", "pass"], user=NOBODY, group=NOBODY, extra_groups=[],
                                   cwd="/", env={"PATH": "/usr/bin:/bin"}, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return candidate
    raise OSError(f"no Python interpreter runnable by uid {NOBODY}")


def _nproc_limit(limits: SandboxLimits, as_root: bool) -> int:
    """RLIMIT_NPROC counts every task of the real uid: as our own uid, allow what it already runs."""
    if as_root:
        return limits.processes
    used = sum(p.info["num_threads"] or 1 for p in psutil.process_iter(["uids", "num_threads"])
               if p.info["uids"] is not None and p.info["uids"].real == os.getuid())
    return used + limits.processes


def _kill_stragglers(run: str, uid: int) -> None:
    """rlimits mode: kill this run's processes that left its process group (e.g. via setsid).

    They are found by the marker in their environment, stopped until a pass finds no new one (a
    stopped process cannot fork a replacement), then killed."""
    stopped: dict[int, psutil.Process] = {}
    for _ in range(100):
        found = False
        for proc in psutil.process_iter(["uids"]):
            try:
                if (proc.pid not in stopped and proc.info["uids"] is not None and proc.info["uids"].real == uid
                        and proc.environ().get(_MARKER) == run):
                    proc.suspend()
                    stopped[proc.pid] = proc
                    found = True
            except psutil.Error:
                continue
        if not found:
            break
    for proc in stopped.values():
        try:
            proc.kill()
        except psutil.Error:
            continue


def _tail(file: IO[bytes], chars: int) -> str:
    if chars <= 0:
        return ""
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - 4 * chars))
    return file.read().decode("utf-8", "replace")[-chars:]


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_REASON_CHARS]


def _failed(reason: str, isolation: str, seconds: float) -> SandboxResult:
    return SandboxResult(False, None, _one_line(reason), "", "", seconds, isolation)
