"""Calibrate Phase A's similarity gate δ for a task family on tasks that the benchmark does not play.

MemRL's Phase A keeps candidates whose intent has cosine similarity > δ with the query. Whether an experience of
*another* task helps depends on the family and the model: with SmolLM2 on HumanEval, another problem's passing code
was copied and failed in every showing (README), so δ should admit a task's own experiences and not its
neighbours'. This prints, for a calibration slice of the family (by default the items after the benchmark's own),
the distribution of each task's nearest *other* task similarity under the configured embedder, and the δ that
shuts out that many of them (default: the 99th percentile). Nothing here reads results.

    python -m benchmarks.delta_calibration --env code                      # HumanEval/40-163 for configs/code-smollm2.yaml
    python -m benchmarks.delta_calibration --config configs/sql-smollm2.yaml --first 200 --num 200
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def nearest_other(vecs: np.ndarray) -> np.ndarray:
    """Each row's highest cosine similarity to any *other* row (rows are L2-normalised); identical texts count."""
    if len(vecs) < 2:
        raise ValueError("need at least two tasks to calibrate δ")
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -np.inf)
    return sims.max(axis=1)


def suggest_delta(nearest: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of the nearest-other similarities, to 0.01: a gate that about this share of tasks' closest
    neighbours does not pass."""
    return round(float(np.quantile(nearest, quantile)), 2)


def available(env: Any) -> int:
    """How many items the family's split has from ``env.first_item`` on (the loaders reject a task set that runs
    past the end, so the largest accepted ``num_tasks`` is found by bisection)."""
    from actors.envs.factory import task_set

    lo, hi = 0, 1 << 20
    while lo < hi:
        mid = (lo + hi + 1) // 2
        env.num_tasks = mid
        try:
            task_set(env)
            lo = mid
        except ValueError:
            hi = mid - 1
    if lo < 2:
        raise ValueError(f"{env.name}: fewer than two items from first_item {env.first_item}")
    return lo


def main(argv: list[str] | None = None) -> int:
    from cluster.config import load
    from actors.envs.factory import make_env, task_set
    from memory_server.embedder import load_embedder

    p = argparse.ArgumentParser(prog="python -m benchmarks.delta_calibration", description=__doc__.splitlines()[0])
    p.add_argument("--env", choices=["code", "sql", "math"], default=None, help="use configs/<env>-smollm2.yaml")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--first", type=int, default=None,
                   help="first calibration item (default: right after the config's own task set)")
    p.add_argument("--num", type=int, default=None, help="calibration items (default: as many as the data has)")
    p.add_argument("--quantile", type=float, default=0.99)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    if (args.env is None) == (args.config is None):
        p.error("give one of --env or --config")
    cfg = load(args.config or Path(f"configs/{args.env}-smollm2.yaml"))
    first = cfg.env.first_item + cfg.env.num_tasks if args.first is None else args.first
    env = cfg.env
    env.items, env.first_item = [], first
    try:
        env.num_tasks = args.num or available(env)
        tasks = task_set(env)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    game = make_env(env)
    try:
        intents = [game.reset(t).intent for t in tasks]
    finally:
        game.close()
    nearest = nearest_other(load_embedder(cfg.memory.embedder).encode(intents))
    out = {"config": str(args.config or f"configs/{args.env}-smollm2.yaml"), "family": env.name,
           "items": f"{first}-{first + len(tasks) - 1}", "tasks": len(tasks), "embedder": cfg.memory.embedder,
           "nearest_other": {f"p{q}": round(float(np.percentile(nearest, q)), 3) for q in (50, 90, 99)}
           | {"max": round(float(nearest.max()), 3)},
           "quantile": args.quantile, "delta": suggest_delta(nearest, args.quantile),
           "config_delta": cfg.memory.delta}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        n = out["nearest_other"]
        print(f"{env.name} items {out['items']} ({len(tasks)} tasks), embedder {out['embedder']}")
        print(f"nearest other task's similarity: p50 {n['p50']}  p90 {n['p90']}  p99 {n['p99']}  max {n['max']}")
        print(f"δ at the {args.quantile:g} quantile: {out['delta']}  (config has {out['config_delta']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
