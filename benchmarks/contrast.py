"""One mode of some learning results against a mode of other results, paired over (task set, run seed).

``benchmarks.pooled`` compares modes that ran side by side in the same runs; this compares across runs, e.g. one
mode under two configs. Each side is a mode and the ``benchmarks/learning.py`` JSON files to take it from (pooled
as ``benchmarks.pooled`` does: a (task set, seed) pair twice on one side is refused); the difference a - b is
taken per (task set, seed) that both sides ran, with its 95% Student-t interval, and is resolved only when the
interval excludes 0. The runs are separate draws of the same seeds, so a same-config contrast (``--a memrl
X.json --b memrl Y.json``) measures the run-to-run spread that every cross-run difference carries.

    python -m benchmarks.contrast --a memory+lora benchmarks/results/learning-ml-6-move.json \\
        --b memory+lora benchmarks/results/learning-ml-6-frozen.json          # the adapter, pacing held equal
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.pooled import pool, result_task_set
from cluster.report import METRICS, NAMES, cell, verdict
from cluster.stats import paired


def side(mode: str, files: list[Path]) -> dict[str, dict[str, float]]:
    """metric -> {"<task set>/<seed>": value} of ``mode`` in ``files`` (ValueError: missing mode, seed twice)."""
    runs = []
    for f in files:
        d = json.loads(f.read_text())
        if mode not in d["comparison"]["runs"]:
            raise ValueError(f"{f}: no mode {mode!r} (it has {', '.join(d['comparison']['runs'])})")
        runs.append((str(f), result_task_set(d), {"runs": {mode: d["comparison"]["runs"][mode]}}))
    return pool(runs)[mode]


def contrast(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], label_a: str, label_b: str,
             ) -> list[dict[str, Any]]:
    """a - b per metric both sides have, over their common (task set, seed) pairs."""
    return [{"a": label_a, "b": label_b, "metric": m, **paired(a[m], b[m]).as_dict()}
            for m in METRICS if m in a and m in b]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.contrast", description=__doc__.splitlines()[0])
    p.add_argument("--a", nargs="+", required=True, metavar=("MODE", "FILE"), help="a mode, then result files")
    p.add_argument("--b", nargs="+", required=True, metavar=("MODE", "FILE"), help="a mode, then result files")
    p.add_argument("--out", type=Path, default=None, help="also write the differences as JSON")
    args = p.parse_args(argv)
    if len(args.a) < 2 or len(args.b) < 2:
        print("benchmarks.contrast: --a and --b each take a mode and at least one result file", file=sys.stderr)
        return 2
    try:
        a = side(args.a[0], [Path(f) for f in args.a[1:]])
        b = side(args.b[0], [Path(f) for f in args.b[1:]])
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:
        print(f"benchmarks.contrast: {e}", file=sys.stderr)
        return 2
    label_a, label_b = f"{args.a[0]} (a)", f"{args.b[0]} (b)"
    diffs = contrast(a, b, label_a, label_b)
    if not any(d["n"] for d in diffs):
        print("benchmarks.contrast: the two sides share no (task set, seed) pair", file=sys.stderr)
        return 2
    print(f"a: {args.a[0]} in {', '.join(args.a[1:])}\nb: {args.b[0]} in {', '.join(args.b[1:])}\n")
    print("| metric | a - b, points | replications | verdict |\n|---|---:|---:|---|")
    for d in diffs:
        print(f"| {NAMES[d['metric']]} | {cell(d, signed=True)} | {d['n']} | {verdict(d)} |")
    print("\nPaired over the (task set, run seed) pairs both sides ran; 95% Student-t interval; resolved only when it "
          "excludes 0 (lower forgetting is better).")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"a": args.a, "b": args.b, "differences": diffs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
