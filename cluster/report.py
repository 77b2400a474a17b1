"""Comparing runs: per-epoch success and CSR, Last, CSR, held-out success and forgetting over seeds, with 95%
intervals and paired differences; a table and a plot.

Owns: reading run folders (``metrics.jsonl`` per seed and epoch, ``episodes.jsonl``, ``heldout/metrics.jsonl`` of the
frozen transfer check when present), aggregating each run over its seeds (mean with a Student-t 95% interval:
``cluster.stats``), the paired differences of each mode against ``none`` and of memrl against rag (and of
memory+lora against memrl and lora) on the seeds both ran, marked resolved only when the interval excludes 0;
rendering ``comparison.md`` (tables), ``comparison.png`` (success and CSR curves per run, mean with a 95% band over
seeds) and ``comparison.json`` (per-seed values, intervals, differences). A folder made by ``run.modes`` holds one
run per mode and is expanded into them.

Figures per run, each per seed then over seeds: **Last** (success rate of the final epoch, over every episode of
it), **CSR** (share of tasks won at least once up to the final epoch), **held-out** (success on unseen tasks with
the memory and adapter frozen), **forgetting** (share of the tasks won in some earlier epoch that no episode of the
final epoch won).

    python -m cluster.report runs/quickstart-20261123-101500 [more run folders] [--out DIR]   # = epiq report ...
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from cluster.metrics import read_jsonl
from cluster.stats import CONFIDENCE, interval, paired

METRICS = ("last", "csr", "heldout", "forgetting")
NAMES = {"last": "Last", "csr": "CSR", "heldout": "held-out (frozen)", "forgetting": "forgetting"}
# compared pairs (a, b): a - b, when both are in the report
PAIRS = [("rag", "none"), ("memrl", "none"), ("memory", "none"), ("lora", "none"), ("memory+lora", "none"),
         ("memrl", "rag"), ("memory+lora", "memrl"), ("memory+lora", "lora")]



def expand(run_dirs: list[Path]) -> dict[str, Path]:
    """Label -> run folder; a comparison folder (sub-folders holding metrics) expands into its modes."""
    runs: dict[str, Path] = {}
    for d in run_dirs:
        d = Path(d)
        if (d / "metrics.jsonl").is_file():
            runs[d.name] = d
            continue
        subs = sorted(s for s in d.iterdir() if (s / "metrics.jsonl").is_file()) if d.is_dir() else []
        if not subs:
            raise FileNotFoundError(f"{d}: no metrics.jsonl in it or in its sub-folders (is it a run folder?)")
        order = _mode_order(d)
        for s in sorted(subs, key=lambda s: order.get(s.name, len(order))):
            runs[s.name if len(run_dirs) == 1 else f"{d.name}/{s.name}"] = s
    return runs


def _mode_order(d: Path) -> dict[str, int]:
    """The order of ``run.modes`` in the folder's saved config (table rows follow it)."""
    try:
        import yaml

        modes = (yaml.safe_load((d / "config.yaml").read_text()) or {}).get("run", {}).get("modes", []) or []
    except (OSError, ValueError):
        modes = []
    return {m: i for i, m in enumerate(modes)}


def forgetting(episodes: list[dict], last_epoch: int) -> float:
    """Share of the tasks won in an epoch before ``last_epoch`` that no episode of ``last_epoch`` won (nan if none
    was won before)."""
    before = {e["task_id"] for e in episodes if e["won"] and e["epoch"] < last_epoch}
    if not before:
        return math.nan
    last = {e["task_id"] for e in episodes if e["won"] and e["epoch"] == last_epoch}
    return len(before - last) / len(before)


def aggregate(run_dir: Path) -> dict[str, Any]:
    """One run over its seeds: per-epoch success and CSR (mean and 95% interval), and per seed and over seeds
    Last, CSR, held-out success and forgetting."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    seeds = sorted({r["seed"] for r in rows})
    epochs = sorted({r["epoch"] for r in rows})
    by = {(r["seed"], r["epoch"]): r for r in rows}
    curve: dict[str, list[float]] = {k: [] for k in ("success_mean", "success_lo", "success_hi",
                                                     "csr_mean", "csr_lo", "csr_hi")}
    for e in epochs:
        for key, name in (("success_rate", "success"), ("csr", "csr")):
            iv = interval([by[(s, e)][key] for s in seeds if (s, e) in by])
            for part in ("mean", "lo", "hi"):
                curve[f"{name}_{part}"].append(getattr(iv, part))
    last_epoch = {s: max(e for (ss, e) in by if ss == s) for s in seeds}
    episodes = read_jsonl(run_dir / "episodes.jsonl")
    per_seed: dict[str, dict[int, float]] = {
        "last": {s: by[(s, last_epoch[s])]["success_rate"] for s in seeds},
        "csr": {s: by[(s, last_epoch[s])]["csr"] for s in seeds},
        "forgetting": {s: forgetting([e for e in episodes if e["seed"] == s], last_epoch[s]) for s in seeds},
    }
    held = read_jsonl(run_dir / "heldout" / "metrics.jsonl")
    if held:
        per_seed["heldout"] = {r["seed"]: r["success_rate"] for r in held}
    out: dict[str, Any] = {"run_dir": str(run_dir), "seeds": seeds, "epochs": [e + 1 for e in epochs], **curve,
                           "episodes_per_epoch": by[(seeds[0], epochs[0])].get("episodes") if rows else None,
                           "per_seed": per_seed, "episodes_per_s": interval([r["episodes_per_s"] for r in rows]).mean}
    for m, values in per_seed.items():
        out[m] = interval(list(values.values())).as_dict()
    return out


def differences(result: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Paired differences (a - b, per seed, then mean and interval) of the pairs in ``PAIRS`` present in
    ``result``, for every metric both runs have."""
    out = []
    for a, b in PAIRS:
        if a not in result or b not in result:
            continue
        for m in METRICS:
            if m in result[a]["per_seed"] and m in result[b]["per_seed"]:
                iv = paired(result[a]["per_seed"][m], result[b]["per_seed"][m])
                out.append({"a": a, "b": b, "metric": m, **iv.as_dict()})
    return out


def compare(runs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return {label: aggregate(d) for label, d in runs.items()}


def cell(iv: dict[str, Any], signed: bool = False) -> str:
    """One table cell: a mean in percent with its interval (signed for differences); '-' when nothing ran."""
    if iv["n"] == 0 or math.isnan(iv["mean"]):
        return "-"
    fmt = (lambda x: f"{x * 100:+.1f}") if signed else (lambda x: f"{x * 100:.1f}")
    if iv["n"] < 2:
        return f"{fmt(iv['mean'])}% (1 seed)"
    return f"{fmt(iv['mean'])}% [{fmt(iv['lo'])}, {fmt(iv['hi'])}]"


def verdict(d: dict[str, Any]) -> str:
    """A paired difference's verdict: not resolved, or which side is better (lower forgetting is better)."""
    if d["n"] < 2:
        return "no interval (1 seed)"
    if not d["resolved"]:
        return "not resolved"
    worse_is_higher = d["metric"] == "forgetting"
    better = (d["lo"] > 0) != worse_is_higher
    return f"**{d['a']} {'better' if better else 'worse'}**"


def markdown(result: dict[str, dict[str, Any]], diffs: list[dict[str, Any]] | None = None) -> str:
    present = [m for m in METRICS if any(m in r["per_seed"] for r in result.values())]
    head = "| run | seeds | epochs | episodes/epoch | " + " | ".join(NAMES[m] for m in present) + " | episodes/s |"
    sep = "|---|---:|---:|---:|" + "---:|" * len(present) + "---:|"
    lines = [head, sep]
    for label, r in result.items():
        cells = [label, str(len(r["seeds"])), str(len(r["epochs"])), str(r.get("episodes_per_epoch") or "-")]
        cells += [cell(r[m]) if m in r else "-" for m in present]
        cells.append(f"{r['episodes_per_s']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    conf = f"{CONFIDENCE:.0%}"
    text = "\n".join(lines) + (
        f"\n\nMean over run seeds with its {conf} Student-t interval [low, high], in percent. Last = success rate of "
        "the final epoch; CSR = share of tasks won at least once; held-out = unseen tasks played once with memory and "
        "adapter frozen; forgetting = share of the tasks won in an earlier epoch that the final epoch did not win.\n")
    diffs = differences(result) if diffs is None else diffs
    if diffs:
        lines = [f"| difference (paired over seeds) | metric | mean [{conf} interval], points | seeds | verdict |",
                 "|---|---|---:|---:|---|"]
        for d in diffs:
            lines.append(f"| {d['a']} - {d['b']} | {NAMES[d['metric']]} | {cell(d, signed=True)} | {d['n']} | "
                         f"{verdict(d)} |")
        text += "\n" + "\n".join(lines) + (
            "\n\nA difference is resolved only when its interval excludes 0 (lower forgetting is better).\n")
    return text


def plot(result: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, name, title in ((axes[0], "success", "success rate per epoch"), (axes[1], "csr", "cumulative success rate (CSR)")):
        for label, r in result.items():
            x, m = r["epochs"], r[f"{name}_mean"]
            ax.plot(x, m, marker="o", label=f"{label} (n={len(r['seeds'])})")
            if len(r["seeds"]) > 1:
                ax.fill_between(x, r[f"{name}_lo"], r[f"{name}_hi"], alpha=0.15)
        ax.set_title(title + f" (band: {CONFIDENCE:.0%} interval over seeds)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finite(x: Any) -> Any:
    """nan -> None all the way down (JSON has no nan)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write_report(runs: dict[str, Path], out_dir: Path) -> dict[str, Any]:
    """Write comparison.{md,png,json} into ``out_dir``; returns the aggregated result with the table text."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = compare(runs)
    diffs = differences(result)
    table = markdown(result, diffs)
    (out_dir / "comparison.md").write_text(table)
    doc = _finite({"confidence": CONFIDENCE, "runs": result, "differences": diffs})
    (out_dir / "comparison.json").write_text(json.dumps(doc, indent=2))
    png = plot(result, out_dir / "comparison.png")
    return {"result": result, "differences": diffs, "table": table, "plot": str(png)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="epiq report", description="Compare runs: Last, CSR, held-out and forgetting "
                                "with 95% intervals over seeds, paired differences, and a plot.")
    p.add_argument("run_dirs", nargs="+", type=Path, help="run folders (a run.modes folder expands into its modes)")
    p.add_argument("--out", type=Path, default=None, help="where to write comparison.{md,png,json} (default: the "
                                                          "single run folder given, else the current folder)")
    args = p.parse_args(argv)
    try:
        runs = expand(args.run_dirs)
    except FileNotFoundError as e:
        print(f"epiq report: {e}")
        return 2
    out = args.out or (args.run_dirs[0] if len(args.run_dirs) == 1 else Path("."))
    report = write_report(runs, out)
    print(report["table"])
    print(f"plot: {report['plot']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
