"""Pooled paired differences over several learning-benchmark runs: each (task set, run seed) is one replication.

Reads the JSON files ``benchmarks/learning.py`` writes and, for every mode pair the report compares
(``cluster.report.PAIRS``) and every metric, takes the per-seed differences of all the runs together and prints
their mean with a 95% Student-t interval (``cluster.stats``), beside each run's own. It answers "does the
difference hold across task sets?" with one interval; it treats the task sets as interchangeable draws, so the
per-set tables stay the primary evidence. A (task set, seed) pair found in two files is refused: counting one
replication twice would narrow the interval without new evidence.

    python -m benchmarks.pooled runs/bench/learning-quickstart.json runs/bench/learning-7000-7239.json \\
        runs/bench/learning-8000-8239.json [--metrics last,csr] [--out runs/bench/pooled.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from cluster.report import METRICS, NAMES, cell, differences, verdict


def task_set_id(run_dir: Path) -> str:
    """A short id of the games a run played (its config's ``env.task_seeds``, order ignored)."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return games_id((cfg.get("env") or {}).get("task_seeds") or [])


def games_id(task_seeds: list[int]) -> str:
    return hashlib.sha1(json.dumps(sorted(task_seeds)).encode()).hexdigest()[:8]


def result_task_set(result: dict[str, Any]) -> str:
    """The task set of a benchmark result: its own ``task_seeds`` (written since this field exists, so a result
    file pools without its run folder, e.g. one kept under benchmarks/results/), else its run folder's config."""
    if result.get("task_seeds"):
        return games_id(result["task_seeds"])
    return task_set_id(Path(result["run_dir"]))


def pool(runs: list[tuple[str, str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """mode -> metric -> {"<task set>/<seed>": value} over ``runs`` = [(label, task set id, comparison JSON)].

    Raises ValueError when one (task set, seed) pair appears in two runs."""
    merged: dict[str, dict[str, dict[str, float]]] = {}
    seen: dict[str, str] = {}
    for label, tset, comparison in runs:
        for mode, r in comparison["runs"].items():
            for metric, values in r["per_seed"].items():
                for seed, v in values.items():
                    key = f"{tset}/{seed}"
                    owner = seen.setdefault(f"{mode}:{key}", label)
                    if owner != label:
                        raise ValueError(f"{label} and {owner} both ran seed {seed} of task set {tset} "
                                         f"(mode {mode}): one replication would be counted twice")
                    merged.setdefault(mode, {}).setdefault(metric, {})[key] = v
    return merged


def pooled_differences(merged: dict[str, dict[str, dict[str, float]]], metrics: tuple[str, ...] = METRICS,
                       ) -> list[dict[str, Any]]:
    """The report's paired differences (``cluster.report.differences``), over every (task set, seed) both modes
    ran."""
    return [d for d in differences({mode: {"per_seed": m} for mode, m in merged.items()}) if d["metric"] in metrics]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pooled", description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path, help="JSON files written by benchmarks/learning.py")
    p.add_argument("--metrics", default=",".join(METRICS), help=f"subset of {','.join(METRICS)}")
    p.add_argument("--out", type=Path, default=None, help="also write the pooled differences as JSON")
    args = p.parse_args(argv)
    metrics = tuple(m for m in args.metrics.split(",") if m)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        print(f"benchmarks.pooled: unknown metric(s) {unknown}; expected some of {list(METRICS)}", file=sys.stderr)
        return 2
    runs, per_run = [], []
    for f in args.files:
        try:
            d = json.loads(f.read_text())
            tset = result_task_set(d)
            runs.append((str(f), tset, d["comparison"]))
        except (OSError, KeyError, json.JSONDecodeError) as e:
            print(f"benchmarks.pooled: {f}: not a learning-benchmark result with its games or its run folder ({e})", file=sys.stderr)
            return 2
        per_run.append((f.name, {(x["a"], x["b"], x["metric"]): x for x in d["comparison"]["differences"]}))
    try:
        diffs = pooled_differences(pool(runs), metrics)
    except ValueError as e:
        print(f"benchmarks.pooled: {e}", file=sys.stderr)
        return 2
    head = "| difference | metric | " + " | ".join(name for name, _ in per_run) + " | pooled | replications | verdict |"
    lines = [head, "|---|---|" + "---:|" * len(per_run) + "---:|---:|---|"]
    for d in diffs:
        k = (d["a"], d["b"], d["metric"])
        cells = [cell(own[k], signed=True) if k in own else "-" for _, own in per_run]
        lines.append(f"| {d['a']} - {d['b']} | {NAMES[d['metric']]} | " + " | ".join(cells)
                     + f" | {cell(d, signed=True)} | {d['n']} | {verdict(d)} |")
    print("\n".join(lines))
    print("\nPer run: the run's own paired difference over its seeds. Pooled: over every (task set, run seed) both "
          "modes ran, 95% Student-t interval; resolved only when it excludes 0.")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"files": [str(f) for f in args.files], "differences": diffs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
