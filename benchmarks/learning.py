"""Learning benchmark: the mode comparison on the quickstart, over several seeds, plus a held-out transfer check.

Runs the real driver (``cluster.train``: local Ray, valkey, the vLLM pool, rollout actors) with ``run.modes`` =
``--modes`` and ``rollout.seeds`` = ``--seeds`` on the quickstart's distractor task set; after each seed's last
epoch every memory mode plays the held-out games once with its memory frozen (no feedback, no writes). Writes
the run folder (``comparison.md``, ``comparison.png``, per-mode metrics) and a JSON summary with the command.

    python -m benchmarks.learning --out runs/bench/learning.json                       # none, rag, memrl; 3 seeds
    python -m benchmarks.learning --modes none,memrl,lora,memory+lora --seeds 0,1,2    # with the LoRA learner
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="epiq bench learning", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--modes", default="none,rag,memrl")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=None, help="override rollout.epochs")
    p.add_argument("--heldout", default=",".join(map(str, HELDOUT_SEEDS)), help="held-out game seeds ('' = none)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--out", type=Path, default=Path("runs/bench/learning.json"))
    p.add_argument("--resume", metavar="RUN_NAME", default=None,
                   help="continue an interrupted run folder under --out's folder (finished episodes are kept)")
    args = p.parse_args(argv)

    from cluster.config import ConfigError, load
    from cluster.train import run

    name = args.resume or f"learning-{time.strftime('%Y%m%d-%H%M%S')}"
    overrides = [f"run.modes=[{args.modes}]", f"rollout.seeds=[{args.seeds}]", f"env.heldout_seeds=[{args.heldout}]",
                 f"run.output_dir={args.out.parent}", f"run.name={name}", f"run.resume={bool(args.resume)}", *args.set]
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
              "seeds": [int(s) for s in args.seeds.split(",")], "wall_s": time.perf_counter() - t0,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "table": summary["table"],
              "plot": summary["plot"], "comparison": comparison}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out} (run folder {run_dir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
