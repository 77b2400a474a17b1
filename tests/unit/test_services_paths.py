"""Ray's temp dir for a run folder whose path is too long for Unix sockets, including a resumed run."""

from __future__ import annotations

import shutil
from pathlib import Path

from cluster.services import _RAY_TEMP_MAX, ray_temp_dir


def test_long_run_folder_links_a_short_temp_dir_and_a_resume_keeps_old_logs(tmp_path: Path) -> None:
    run_dir = tmp_path / ("r" * (_RAY_TEMP_MAX + 10))
    run_dir.mkdir()
    first = ray_temp_dir(run_dir)
    assert (run_dir / "ray").is_symlink() and (run_dir / "ray").resolve() == first.resolve()
    # the driver moves the temp dir into the run folder when Ray is down (a real directory from then on)
    (first / "old.log").write_text("session 1")
    (run_dir / "ray").unlink()
    shutil.move(str(first), str(run_dir / "ray"))
    second = ray_temp_dir(run_dir)  # resumed run
    try:
        assert (run_dir / "ray").is_symlink() and (run_dir / "ray").resolve() == second.resolve()
        kept = [p for p in run_dir.iterdir() if p.name.startswith("ray.")]
        assert len(kept) == 1 and (kept[0] / "old.log").read_text() == "session 1"
    finally:
        shutil.rmtree(second, ignore_errors=True)


def test_a_second_sigterm_during_clean_up_does_not_cut_it_short(tmp_path, monkeypatch) -> None:
    """A SIGTERM that arrives while the services stop is noted, not obeyed: the clean-up runs to its end, and the
    handlers from before are back afterwards."""
    import os
    import signal
    import time

    from cluster.config import build
    from cluster.services import LocalServices, _raise_on_sigterm

    before = signal.getsignal(signal.SIGTERM)
    svc = LocalServices(build({}), tmp_path)
    svc._old_sigterm = before
    signal.signal(signal.SIGTERM, _raise_on_sigterm)  # what entering the services installs
    finished = []

    def clean_up() -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the second SIGTERM, mid clean-up
        time.sleep(0.05)
        finished.append(True)

    monkeypatch.setattr(svc, "_stop_all", clean_up)
    try:
        svc.stop()
        after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert finished == [True]
    assert after is before  # the run's handler is gone, the one from before the run is back


def test_clean_up_leaves_multiprocessing_s_resource_tracker_to_exit_with_the_driver() -> None:
    """The epiq-tiny build's spawn-context process pool starts multiprocessing's resource tracker, which ignores
    SIGTERM by design: clean-up must not wait for it and SIGKILL it (a warning on every cold quickstart)."""
    import json
    import subprocess
    import sys

    code = (
        "import json, multiprocessing as mp\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from multiprocessing import resource_tracker\n"
        "from cluster.services import descendants, stop_pids\n"
        "if __name__ == '__main__':\n"
        "    with ProcessPoolExecutor(1, mp_context=mp.get_context('spawn')) as pool:\n"
        "        assert pool.submit(abs, -1).result() == 1\n"
        "    tracker = resource_tracker._resource_tracker._pid\n"
        "    owned = descendants()\n"
        "    print(json.dumps({'tracker': tracker, 'owned': list(owned), 'forced': stop_pids(owned, timeout=2)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tracker"] is not None  # the pool did start one
    assert out["tracker"] not in out["owned"] and out["forced"] == []
