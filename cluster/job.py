"""A training job on running services: model, inference pool, memory shards, rollout actors, scheduler, summary.

Owns: wiring the components for one run — one vLLM pool for the whole run; per seed a fresh memory namespace
(``<memory.namespace>-s<seed>``) with its shard actors, rollout actors and the scheduler — and writing
``summary.json``. With ``run.resume`` it continues from the run folder: recorded episodes are skipped and the
memory is whatever the run's Redis kept (``redis.durable: true`` keeps it across a restart).

    summary = run_job(cfg, run_dir, redis_url)     # called by cluster.train inside LocalServices
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from cluster.config import Config
from cluster.metrics import Recorder
from cluster.scheduler import Scheduler

log = logging.getLogger(__name__)


def seed_config(cfg: Config, seed: int) -> Config:
    """The config one seed runs with: its own memory namespace and sampling seed."""
    return dataclasses.replace(cfg, memory=dataclasses.replace(cfg.memory, namespace=f"{cfg.memory.namespace}-s{seed}"),
                               llm=dataclasses.replace(cfg.llm, seed=cfg.llm.seed + seed))


def start_inference(cfg: Config) -> tuple[str, Any]:
    """Resolve (building if needed) the model, start the pool; returns (model path, pool or None for openai)."""
    from actors.model_builder import resolve_model

    cache = Path(cfg.run.cache_dir)
    model_path = resolve_model(cfg.llm.model, cache)
    if cfg.llm.backend != "vllm":
        return model_path, None
    from actors.llm_pool import start_pool

    log.info("starting %d vLLM engine(s) for %s", cfg.llm.engines, model_path)
    return model_path, start_pool(cfg.llm, model_path, cache_dir=str(cache))


def run_job(cfg: Config, run_dir: Path, redis_url: str | None, max_episodes: int | None = None) -> dict[str, Any]:
    import ray

    from actors.envs import task_set
    from actors.rollout import start_rollout_workers

    if cfg.memory.enabled:
        from memory_server.embedder import resolve_embedder_path

        resolve_embedder_path(cfg.memory.embedder)  # fail here, not in every rollout actor
    tasks = task_set(cfg.env, cache_dir=cfg.run.cache_dir)
    log.info("task set: %d %s tasks (%s)", len(tasks), cfg.env.name, cfg.env.split)
    model_path, pool = start_inference(cfg)
    engines = pool.handles if pool is not None else None
    recorder = Recorder(run_dir, [t.task_id for t in tasks], cfg.rollout.epochs)
    try:
        for seed in cfg.rollout.seeds:
            scfg = seed_config(cfg, seed)
            shards, memory = _start_memory(scfg, redis_url)
            recorder.q_stats = (lambda _seed, m=memory: m.stats()) if memory else None

            def spawn(i: int, scfg: Config = scfg, shards: Any = shards) -> Any:
                return start_rollout_workers(scfg, model_path, engines, shards, redis_url, first_id=i, count=1)[0]

            sched = Scheduler(scfg, tasks, spawn, recorder, run_id=run_dir.name)
            try:
                sched.run_seed(seed, done=recorder.finished(seed), max_episodes=max_episodes)
            finally:
                sched.shutdown()
                for h in shards or []:
                    ray.kill(h, no_restart=True)
            summary = {**recorder.summary(), "replaced_actors": sched.replaced}
    finally:
        recorder.close()
        if pool is not None:
            _run(pool.shutdown())
    summary["model"] = model_path
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _start_memory(cfg: Config, redis_url: str | None) -> tuple[list[Any] | None, Any]:
    if not cfg.memory.enabled:
        return None, None
    from memory_server.client import MemoryClient, start_shards

    shards = start_shards(cfg.memory, redis_url or "")
    log.info("memory namespace %s: %d shard(s)", cfg.memory.namespace, len(shards))
    return shards, MemoryClient(shards, redis_url or "", cfg.memory)


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)
