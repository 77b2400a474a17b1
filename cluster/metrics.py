"""Run metrics: every finished episode (``episodes.jsonl``), per-epoch figures (``metrics.jsonl`` + TensorBoard),
the progress line (live on a terminal; a plain line every ``PROGRESS_EVERY_S`` in a log file), and Last / CSR —
the MemRL protocol's two numbers.

Owns: appending episodes as they finish (the record that ``run.resume`` continues from), closing an epoch when
all its tasks are in (success rate, CSR, steps, tokens/s, episodes/s, retrieval hit rate, Q statistics), and
reading a run folder back.

    rec = Recorder(run_dir, tasks=[t.task_id for t in tasks], epochs=10, q_stats=lambda seed: mem.stats())
    rec.record(traj)            # appends to episodes.jsonl; closes the epoch when complete
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO


class RunFileError(RuntimeError):
    """A run folder's record file is corrupt; the message names the file and line."""


def read_jsonl(path: Path, repair: bool = False) -> list[dict]:
    """The JSON lines of ``path`` ([] if it does not exist). A final line without its newline that does not parse
    was cut off mid-append (a hard kill): it is left out, and with ``repair`` cut from the file so that appends
    continue on a clean line. Any other line that does not parse raises ``RunFileError`` naming file and line."""
    if not path.exists():
        return []
    data = path.read_bytes()
    rows, offset = [], 0
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        if raw.strip():
            try:
                rows.append(json.loads(raw))
            except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
                if raw.endswith(b"\n"):
                    raise RunFileError(f"{path}:{number}: not a JSON line ({e}); the run folder is damaged") from None
                if repair:
                    with path.open("r+b") as f:
                        f.truncate(offset)
                break
        offset += len(raw)
    return rows


log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 30.0  # seconds between progress lines when the output is not a terminal

def slot(task_id: str, sample: int) -> str:
    """The key of one episode within an epoch: the task, and which of its group_size samples."""
    return task_id if not sample else f"{task_id}#{sample}"


def csr(solved_by_epoch: list[set[str]], n_tasks: int) -> list[float]:
    """Cumulative success rate: fraction of tasks solved at least once up to each epoch."""
    seen: set[str] = set()
    out = []
    for solved in solved_by_epoch:
        seen |= solved
        out.append(len(seen) / n_tasks if n_tasks else 0.0)
    return out


class Recorder:
    """Episodes and epoch metrics of one run folder (all seeds)."""

    def __init__(self, run_dir: Path, tasks: list[str], epochs: int, q_stats: Callable[[int], dict] | None = None,
                 progress: TextIO | None = sys.stderr, tensorboard: bool = True, group_size: int = 1) -> None:
        self.run_dir, self.tasks, self.epochs, self.q_stats = run_dir, list(tasks), epochs, q_stats
        self.group_size = group_size
        self.per_epoch = len(self.tasks) * group_size  # episodes that close an epoch
        self.progress = progress
        self._tty = bool(progress is not None and getattr(progress, "isatty", lambda: False)())
        self._last_line = time.monotonic()
        self.episodes_path, self.metrics_path = run_dir / "episodes.jsonl", run_dir / "metrics.jsonl"
        self.results: dict[tuple[int, int], dict[str, dict]] = defaultdict(dict)  # (seed, epoch) -> slot -> episode
        self.closed: set[tuple[int, int]] = set()
        self.epoch_rows: list[dict] = []
        self._t0, self._n, self._won = time.perf_counter(), 0, 0
        self._epoch_start: dict[tuple[int, int], float] = {}
        self._load()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def _load(self) -> None:
        """Read back a run folder (resume): episodes already recorded, epochs already closed. A last line cut off
        by a hard kill is dropped from the file (that episode runs again); any other bad line is an error."""
        for ep in read_jsonl(self.episodes_path, repair=True):
            self.results[(ep["seed"], ep["epoch"])][slot(ep["task_id"], ep.get("sample", 0))] = ep
        for row in read_jsonl(self.metrics_path, repair=True):
            self.epoch_rows.append(row)
            self.closed.add((row["seed"], row["epoch"]))

    def finished(self, seed: int) -> set[tuple[int, str, int]]:
        """(epoch, task, sample) of every episode of ``seed`` already recorded."""
        return {(e, ep["task_id"], ep.get("sample", 0)) for (s, e), eps in self.results.items() if s == seed
                for ep in eps.values()}

    def record(self, traj: Any, attempt: int = 0) -> None:
        key = (traj.seed, traj.epoch)
        where = slot(traj.task_id, traj.sample)
        if where in self.results[key]:
            return  # a re-dispatched episode that also finished: the first result counts
        ep = {**traj.summary(), "attempt": attempt}
        self.results[key][where] = ep
        with self.episodes_path.open("a") as f:
            f.write(json.dumps(ep) + "\n")
        self._epoch_start.setdefault(key, time.perf_counter() - traj.timings.get("total", 0.0))
        self._n += 1
        self._won += int(ep["won"])
        self._show(traj)
        if len(self.results[key]) == self.per_epoch and key not in self.closed:
            self._close(*key)

    def _show(self, traj: Any) -> None:
        if self.progress is None:
            return
        rate = self._n / max(time.perf_counter() - self._t0, 1e-9)
        total = self.epochs * self.per_epoch
        done = len(self.results[(traj.seed, traj.epoch)])
        line = (f"[seed {traj.seed} epoch {traj.epoch + 1}/{self.epochs}] {done}/{self.per_epoch} episodes  "
                f"success {self._won / self._n:.0%}  {rate:.2f} episodes/s  ({self._n} done in this run, {total} per seed)")
        if self._tty:  # a live line on a terminal; a log file gets a plain line every PROGRESS_EVERY_S instead
            self.progress.write(f"\r{line}   ")
        elif time.monotonic() - self._last_line >= PROGRESS_EVERY_S:
            self._last_line = time.monotonic()
            self.progress.write(line + "\n")
        else:
            return
        self.progress.flush()

    def _close(self, seed: int, epoch: int) -> None:
        eps = list(self.results[(seed, epoch)].values())
        solved = [{e["task_id"] for e in self.results[(seed, ep)].values() if e["won"]} for ep in range(epoch + 1)]
        wall = max(time.perf_counter() - self._epoch_start.get((seed, epoch), time.perf_counter()), 1e-9)
        tokens = sum(e["generated_tokens"] for e in eps)
        row = {
            "seed": seed, "epoch": epoch, "episodes": len(eps),
            "success_rate": sum(e["won"] for e in eps) / len(eps),
            "csr": csr(solved, len(self.tasks))[-1],
            "solved": sorted(solved[-1]),  # tasks won at least once in this epoch (forgetting: cluster.report)
            "errors": sum(1 for e in eps if e["error"]),
            "steps_mean": sum(e["steps"] for e in eps) / len(eps),
            "retrieval_hit_rate": sum(1 for e in eps if e["retrieved_ids"]) / len(eps),
            "tokens_per_s": tokens / wall, "episodes_per_s": len(eps) / wall, "wall_s": wall,
        }
        if self.q_stats is not None:
            try:
                stats = self.q_stats(seed)
                row.update({f"memory_{k}": v for k, v in stats.items() if isinstance(v, (int, float))})
            except Exception as e:  # a statistic, not a result: the epoch row is written without it
                log.warning("epoch %d (seed %d): memory statistics unavailable (%s: %s)", epoch, seed,
                            type(e).__name__, e)
        self.epoch_rows.append(row)
        self.closed.add((seed, epoch))
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            step = epoch + 1
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("seed", "epoch"):
                    self._tb.add_scalar(f"seed{seed}/{k}", v, step)
            self._tb.flush()
        if self.progress is not None:
            self.progress.write(f"{chr(10) if self._tty else ''}epoch {epoch + 1} (seed {seed}): success {row['success_rate']:.1%}  CSR {row['csr']:.1%}  "
                                f"hit {row['retrieval_hit_rate']:.0%}  {row['episodes_per_s']:.2f} ep/s\n")

    def summary(self) -> dict[str, Any]:
        """Last and CSR per seed (and their mean) from the closed epochs."""
        by_seed: dict[int, list[dict]] = defaultdict(list)
        for row in self.epoch_rows:
            by_seed[row["seed"]].append(row)
        per_seed = {s: {"last": rows[-1]["success_rate"], "csr": rows[-1]["csr"], "epochs": len(rows)}
                    for s, rows in ((s, sorted(r, key=lambda x: x["epoch"])) for s, r in by_seed.items())}
        n = len(per_seed) or 1
        return {"seeds": per_seed, "last": sum(v["last"] for v in per_seed.values()) / n,
                "csr": sum(v["csr"] for v in per_seed.values()) / n}

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
