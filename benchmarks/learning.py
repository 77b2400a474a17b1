"""Learning benchmark: the mode comparison over several seeds, with intervals, paired differences and a held-out
transfer check, on the quickstart's task set or on a fresh one.

Runs the real driver (``cluster.train``: local Ray, valkey, the vLLM pool, rollout actors, the LoRA learner) with
``run.modes`` = ``--modes`` and ``rollout.seeds`` = ``--seeds`` on the quickstart's distractor task set, or with
``--taskset FILE`` on a task set built by ``python -m actors.envs.distractors ... --groups 10 --out FILE`` (groups
1-5 are played, groups 6-10 are the held-out games); after each seed's last epoch every mode plays the held-out
games once with its memory and adapter frozen. Writes the run folder (``comparison.{md,png,json}``, per-mode
metrics) and a JSON summary: the command, the games, per-seed results, intervals, paired differences, and the learner's
per-step metrics (advantages, KL to the behaviour policy and to the base model, reward, replayed wins) of each
LoRA mode and seed. ``python -m benchmarks.pooled`` pools several such JSON files over (task set, run seed).

    python -m benchmarks.learning --out runs/bench/learning.json          # all five modes, 6 run seeds (0-5)
    python -m benchmarks.learning --taskset runs/tasksets/distractors-7000-7239.json --seeds 10-13
    python -m benchmarks.learning --env code --modes none,rag,memrl      # HumanEval with SmolLM2 (configs/code-smollm2.yaml)

``--env code|sql|math`` runs that family's CPU config (``configs/<env>-smollm2.yaml``: SmolLM2-135M-Instruct,
a subset sized for this machine) with no held-out set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# groups 6-10 of `python -m actors.envs.distractors --seeds 1000-1239 --groups 10 --size 4` (groups 1-5 are the
# quickstart's task set): unseen games with the same kind of near-duplicate intents
HELDOUT_SEEDS = [1029, 1164, 1037, 1102, 1057, 1230, 1043, 1078, 1128, 1075, 1180, 1212,
                 1033, 1118, 1124, 1104, 1109, 1089, 1207, 1177]


def seed_list(text: str) -> list[int]:
    """Run seeds from ``--seeds``: comma-separated integers or inclusive ranges (``0-5``, ``6,7,8``, ``0-2,9``)."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise ValueError(f"--seeds: {part.strip()!r} is not an integer or a range LO-HI") from None
        if last < first:
            raise ValueError(f"--seeds: empty range {part.strip()!r}")
        seeds += range(first, last + 1)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: {text!r} names a seed twice")
    return seeds


def learner_steps(run_dir: Path) -> dict[str, dict[str, list[dict]]]:
    """mode -> seed -> the learner's per-step metrics (advantage, KL to the behaviour policy and to the base model,
    reward, loss, clip fraction, replayed wins)."""
    keys = ("step", "version", "trajectories", "advantage_abs", "kl_behav", "kl_ref", "reward_mean", "loss",
            "clip_frac", "grad_norm", "dropped_stale", "staleness", "replayed", "replay_advantage")
    out: dict[str, dict[str, list[dict]]] = {}
    for path in sorted(run_dir.glob("*/learner/s*/learner_metrics.jsonl")):
        mode, seed = path.parts[-4], path.parts[-2]
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        out.setdefault(mode, {})[seed] = [{k: r.get(k) for k in keys} for r in rows]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="epiq bench learning", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="default: configs/quickstart.yaml, or the --env family's config")
    p.add_argument("--env", choices=["textworld", "code", "sql", "math"], default="textworld",
                   help="task family: the quickstart's TextWorld games, or configs/<env>-smollm2.yaml")
    p.add_argument("--modes", default="none,rag,memrl,lora,memory+lora")
    p.add_argument("--seeds", default=None, help="run seeds: 0-5, 6,7,8 or 0-2,9 (default: 0-5 for TextWorld, the quickstart's seeds; "
                                                  "0-3 otherwise)")
    p.add_argument("--epochs", type=int, default=None, help="override rollout.epochs")
    p.add_argument("--heldout", default=None, help="held-out game seeds ('' = none; default: the quickstart's "
                                                   "groups 6-10, or the task set's)")
    p.add_argument("--taskset", type=Path, default=None,
                   help="a distractors JSON (--groups 10): groups 1-5 are the tasks, groups 6-10 the held-out games")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--out", type=Path, default=Path("runs/bench/learning.json"))
    p.add_argument("--resume", metavar="RUN_NAME", default=None,
                   help="continue an interrupted run folder under --out's folder (finished episodes are kept)")
    args = p.parse_args(argv)

    from cluster.config import ConfigError, load
    from cluster.train import run

    name = args.resume or f"learning-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.config is None:
        args.config = "configs/quickstart.yaml" if args.env == "textworld" else f"configs/{args.env}-smollm2.yaml"
    if args.env != "textworld" and (args.taskset or args.heldout):
        print("epiq bench learning: --taskset and --heldout are for the TextWorld games", file=sys.stderr)
        return 2
    try:
        seeds = seed_list(args.seeds or ("0-5" if args.env == "textworld" else "0-3"))
    except ValueError as e:
        print(f"epiq bench learning: {e}", file=sys.stderr)
        return 2
    heldout = ",".join(map(str, HELDOUT_SEEDS)) if args.heldout is None else args.heldout
    overrides = [f"run.modes=[{args.modes}]", f"rollout.seeds=[{','.join(map(str, seeds))}]",
                 f"run.output_dir={args.out.parent}", f"run.name={name}", f"run.resume={bool(args.resume)}"]
    if args.taskset is not None:
        groups = json.loads(args.taskset.read_text())["groups"]
        if len(groups) < 6:
            print(f"epiq bench learning: {args.taskset} has {len(groups)} groups; build it with --groups 10",
                  file=sys.stderr)
            return 2
        overrides.append(f"env.task_seeds=[{','.join(str(x) for g in groups[:5] for x in g['seeds'])}]")
        if args.heldout is None:
            heldout = ",".join(str(x) for g in groups[5:] for x in g["seeds"])
    if args.env == "textworld":
        overrides.append(f"env.heldout_seeds=[{heldout}]")
    overrides += args.set
    if args.epochs:
        overrides.append(f"rollout.epochs={args.epochs}")
    try:
        cfg = load(args.config, overrides)
    except ConfigError as e:
        print(f"epiq bench learning: config error: {e}", file=sys.stderr)
        return 2
    load_before, t0 = os.getloadavg(), time.perf_counter()
    code = run(cfg, args.config)
    if code != 0:
        return code
    run_dir = args.out.parent / name
    summary = json.loads((run_dir / "summary.json").read_text())
    comparison = json.loads((run_dir / "comparison.json").read_text())
    result = {"command": "python -m benchmarks.learning " + " ".join(argv if argv is not None else sys.argv[1:]),
              "config": args.config, "run_dir": str(run_dir), "modes": args.modes.split(","),
              "seeds": seeds, "wall_s": time.perf_counter() - t0,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "table": summary["table"],
              "plot": summary["plot"], "task_seeds": list(cfg.env.task_seeds),  # the games: what benchmarks.pooled pairs on
              "comparison": comparison, "learner_steps": learner_steps(run_dir)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out} (run folder {run_dir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
