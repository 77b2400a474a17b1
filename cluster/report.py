"""Comparing runs: per-epoch success and CSR, Last and CSR with their spread over seeds, a table and a plot.

Owns: reading run folders (``metrics.jsonl`` per seed and epoch, ``heldout/metrics.jsonl`` of the frozen-memory
transfer check when present), aggregating each run over its seeds (mean and standard deviation), rendering
``comparison.md`` (markdown table), ``comparison.png`` (success and CSR curves per run, mean with a band of ±1
standard deviation over seeds) and ``comparison.json``. A folder made by ``run.modes`` holds one run per mode
and is expanded into them.

    python -m cluster.report runs/quickstart-20261123-101500 [more run folders] [--out DIR]   # = epiq report ...
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


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


def aggregate(run_dir: Path) -> dict[str, Any]:
    """One run over its seeds: per-epoch mean/sd of success and CSR, Last and CSR (final epoch) mean/sd."""
    rows = _rows(run_dir / "metrics.jsonl")
    seeds = sorted({r["seed"] for r in rows})
    epochs = sorted({r["epoch"] for r in rows})
    by = {(r["seed"], r["epoch"]): r for r in rows}
    curve = {k: [] for k in ("success_mean", "success_sd", "csr_mean", "csr_sd")}
    for e in epochs:
        for key, name in (("success_rate", "success"), ("csr", "csr")):
            m, sd = _mean_sd([by[(s, e)][key] for s in seeds if (s, e) in by])
            curve[f"{name}_mean"].append(m)
            curve[f"{name}_sd"].append(sd)
    last_epoch = {s: max(e for (ss, e) in by if ss == s) for s in seeds}
    last = [by[(s, last_epoch[s])]["success_rate"] for s in seeds]
    csr = [by[(s, last_epoch[s])]["csr"] for s in seeds]
    out: dict[str, Any] = {"run_dir": str(run_dir), "seeds": seeds, "epochs": [e + 1 for e in epochs], **curve,
                           "last": _mean_sd(last), "csr": _mean_sd(csr), "last_per_seed": last, "csr_per_seed": csr,
                           "episodes_per_s": _mean_sd([r["episodes_per_s"] for r in rows])[0]}
    held = _rows(run_dir / "heldout" / "metrics.jsonl")
    if held:
        out["heldout"] = _mean_sd([r["success_rate"] for r in held])
    return out


def compare(runs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return {label: aggregate(d) for label, d in runs.items()}


def _pm(pair: tuple[float, float]) -> str:
    m, sd = pair
    return f"{m:.1%} ± {sd:.1%}"


def markdown(result: dict[str, dict[str, Any]]) -> str:
    held = any("heldout" in r for r in result.values())
    head = "| run | seeds | epochs | Last | CSR |" + (" held-out (memory frozen) |" if held else "") + " episodes/s |"
    sep = "|---|---:|---:|---:|---:|" + ("---:|" if held else "") + "---:|"
    lines = [head, sep]
    for label, r in result.items():
        cells = [label, str(len(r["seeds"])), str(len(r["epochs"])), _pm(r["last"]), _pm(r["csr"])]
        if held:
            cells.append(_pm(r["heldout"]) if "heldout" in r else "-")
        cells.append(f"{r['episodes_per_s']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nLast = success rate of the final epoch; CSR = share of tasks solved at least once; mean ± standard deviation over seeds.\n"


def plot(result: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, name, title in ((axes[0], "success", "success rate per epoch"), (axes[1], "csr", "cumulative success rate (CSR)")):
        for label, r in result.items():
            x, m, sd = r["epochs"], r[f"{name}_mean"], r[f"{name}_sd"]
            ax.plot(x, m, marker="o", label=f"{label} (n={len(r['seeds'])})")
            ax.fill_between(x, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(runs: dict[str, Path], out_dir: Path) -> dict[str, Any]:
    """Write comparison.{md,png,json} into ``out_dir``; returns the aggregated result with the table text."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = compare(runs)
    table = markdown(result)
    (out_dir / "comparison.md").write_text(table)
    (out_dir / "comparison.json").write_text(json.dumps(result, indent=2))
    png = plot(result, out_dir / "comparison.png")
    return {"result": result, "table": table, "plot": str(png)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="epiq report", description="Compare runs: table and plot of success and CSR.")
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
