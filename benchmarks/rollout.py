"""Rollout-plane benchmark: synchronous vs asynchronous scheduling, and the pipeline's overhead over bare vLLM.

In one run, on the quickstart's model, tasks and memory (real Ray, real vLLM, real Redis, real TextWorld):
1. the same episodes scheduled in ``sync`` mode (a barrier after each batch of ``max_in_flight``) and in ``async``
   mode (continuous dispatch): episodes/s and generated tokens/s (episode lengths vary: wins end early, failures
   run to the step limit);
2. bare generation: every LLM call of the async run replayed straight against the same engines (same prompt
   token ids, the same number of output tokens forced with ``min_tokens``, at most ``max_in_flight`` at once,
   no environment, memory or scheduler) — overhead = async wall time / bare wall time - 1.
A warm-up pass (not timed) runs first. Prints a table, writes JSON (with the command and the machine's load average, since other work skews timings).

    python -m benchmarks.rollout --out runs/bench/rollout.json [--tasks 16 --epochs 1 --max-in-flight 8]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from cluster.config import Config, load
from cluster.metrics import Recorder


class _Keep(Recorder):
    """A Recorder that also keeps every trajectory (with its turns) for the replay."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.trajs: list[Any] = []

    def record(self, traj: Any, attempt: int = 0) -> None:
        self.trajs.append(traj)
        super().record(traj, attempt)


def _schedule(cfg: Config, mode: str, tasks: list[Any], model_path: str, pool: Any, redis_url: str,
              run_dir: Path, label: str | None = None) -> dict[str, Any]:
    import ray

    from cluster.job import _start_memory
    from cluster.scheduler import Scheduler
    from cluster.wiring import start_rollout_workers

    mcfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, mode=mode),
                               memory=dataclasses.replace(cfg.memory, namespace=f"bench-rollout-{label or mode}"))
    shards, _ = _start_memory(mcfg, redis_url)
    (run_dir / (label or mode)).mkdir(parents=True, exist_ok=True)
    rec = _Keep(run_dir / (label or mode), [t.task_id for t in tasks], mcfg.rollout.epochs, progress=None,
                tensorboard=False)
    sched = Scheduler(mcfg, tasks, lambda i: start_rollout_workers(mcfg, model_path, pool.handles, shards, redis_url,
                                                                   first_id=i, count=1)[0], run_id=f"bench-{label or mode}")
    try:
        ray.get([w.pid.remote() for w in sched.workers])  # actors up (embedder and tokenizer loaded) before timing
        t0 = time.perf_counter()
        sched.run_seed(0, rec)
        wall = time.perf_counter() - t0
    finally:
        sched.shutdown()
        for h in shards or []:
            ray.kill(h, no_restart=True)
        rec.close()
    trajs = rec.trajs
    tokens = sum(t.generated_tokens for t in trajs)
    steps = [t.steps for t in trajs]
    return {"mode": mode, "episodes": len(trajs), "wall_s": wall, "episodes_per_s": len(trajs) / wall,
            "tokens": tokens, "tokens_per_s": tokens / wall, "llm_calls": sum(len(t.turns) for t in trajs),
            "success_rate": sum(t.won for t in trajs) / max(len(trajs), 1),
            "errors": [t.error for t in trajs if t.error][:5],
            "steps_min": min(steps, default=0), "steps_max": max(steps, default=0),
            "steps_mean": sum(steps) / max(len(steps), 1), "_trajs": trajs}


async def _replay(pool: Any, trajs: list[Any], concurrency: int, temperature: float) -> dict[str, Any]:
    calls = [(t.prompt_ids, len(t.output_ids)) for tr in trajs for t in tr.turns if t.output_ids]
    gate = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(prompt: list[int], n: int) -> None:
        nonlocal tokens
        async with gate:
            out = await pool.generate(prompt, max_tokens=n, min_tokens=n, temperature=temperature)
            tokens += len(out.output_token_ids)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(p, n) for p, n in calls))
    wall = time.perf_counter() - t0
    return {"llm_calls": len(calls), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="epiq bench rollout", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--tasks", type=int, default=16, help="tasks of the config's task set to play (first N)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-in-flight", type=int, default=8, help="episodes in flight (the sync batch size)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--out", type=Path, default=Path("runs/bench/rollout.json"))
    args = p.parse_args(argv)

    from actors.envs import task_set
    from actors.envs.textworld_env import generate_game
    from cluster.job import start_inference
    from cluster.services import LocalServices, redirect_caches

    run_dir = args.out.parent / f"rollout-{time.strftime('%Y%m%d-%H%M%S')}"
    overrides = [*args.set, f"rollout.epochs={args.epochs}", f"rollout.max_in_flight={args.max_in_flight}",
                 f"rollout.concurrency={args.max_in_flight}", "run.modes=[]", f"run.output_dir={args.out.parent}"]
    cfg = load(args.config, overrides)
    redirect_caches(Path(cfg.run.cache_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    with LocalServices(cfg, run_dir) as services:
        tasks = task_set(cfg.env, cache_dir=cfg.run.cache_dir)[:args.tasks]
        if cfg.env.name == "textworld":
            for t in tasks:  # generate games before timing
                generate_game(t, cfg.run.cache_dir)
        model_path, pool = start_inference(cfg)
        try:
            print(f"bench rollout: {len(tasks)} tasks x {args.epochs} epoch(s), max {args.max_in_flight} in flight",
                  file=sys.stderr)
            # warm-up (not timed): first requests, embedder and game loading would otherwise bill the first mode
            _schedule(cfg, "async", tasks[:args.max_in_flight], model_path, pool, services.redis_url or "", run_dir,
                      label="warmup")
            runs = {}
            for mode in ("sync", "async"):
                runs[mode] = _schedule(cfg, mode, tasks, model_path, pool, services.redis_url or "", run_dir)
                print(f"  {mode}: {runs[mode]['episodes_per_s']:.3f} episodes/s", file=sys.stderr)
            bare = asyncio.run(_replay(pool, runs["async"].pop("_trajs"), args.max_in_flight, cfg.llm.temperature))
            runs["sync"].pop("_trajs")
        finally:
            asyncio.run(pool.shutdown())
    load_after = os.getloadavg()
    sync, asy = runs["sync"], runs["async"]
    result = {
        "command": "python -m benchmarks.rollout " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": args.config, "tasks": len(tasks), "epochs": args.epochs, "max_in_flight": args.max_in_flight,
        "model": model_path, "cpu_count": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
        "sync": sync, "async": asy, "bare_vllm": bare,
        "async_over_sync_episodes_per_s": asy["episodes_per_s"] / sync["episodes_per_s"],
        "overhead_vs_bare": asy["wall_s"] / bare["wall_s"] - 1.0,
    }
    print(f"\n| run | episodes | wall s | episodes/s | tokens/s | LLM calls | steps min/mean/max |\n|---|---:|---:|---:|---:|---:|---|")
    for name, r in (("sync", sync), ("async", asy)):
        print(f"| {name} | {r['episodes']} | {r['wall_s']:.1f} | {r['episodes_per_s']:.3f} | {r['tokens_per_s']:.1f} | "
              f"{r['llm_calls']} | {r['steps_min']}/{r['steps_mean']:.1f}/{r['steps_max']} |")
    print(f"| bare vLLM (async run's calls replayed) | - | {bare['wall_s']:.1f} | - | {bare['tokens_per_s']:.1f} | "
          f"{bare['llm_calls']} | - |")
    print(f"\nasync / sync episodes/s: {result['async_over_sync_episodes_per_s']:.2f}x;  "
          f"pipeline overhead vs bare vLLM: {result['overhead_vs_bare']:+.0%};  "
          f"load average before/after: {load_before[0]:.2f}/{load_after[0]:.2f} on {os.cpu_count()} cores")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
