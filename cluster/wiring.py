"""The one place where plain component classes become Ray actors: placement, concurrency, restarts.

Owns: ``start_pool`` (vLLM engine actors behind an ``LLMPool``), ``start_shards`` (memory shard actors),
``start_rollout_workers`` (async rollout actors, each given only its own config sections), ``attach_rollout_workers``
(the same actors re-pointed at the next seed's memory), ``stop_actors`` and ``start_learner``
(the threaded LoRA learner actor), plus the name of the trajectory stream a run's rollouts feed and its learner
reads. Components never import Ray to make themselves remote, and never see the whole config tree. Library
cache locations reach the actors through the job's environment: a local Ray inherits the driver's (set by
``common.caches.redirect_caches`` before Ray starts); a joined cluster gets them as the job's runtime
environment (``cluster.services.LocalServices``).

    pool = start_pool(cfg.llm, model_path)
    shards = start_shards(cfg.memory, redis_url)
    workers = start_rollout_workers(cfg, model_path, pool.handles, shards, redis_url)
    workers = attach_rollout_workers(workers, next_seed_cfg, next_shards, redis_url)
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors.config import LLMConfig
from actors.llm_pool import MAX_CONCURRENCY, LLMEngine, LLMPool
from actors.rollout import RolloutWorker
from cluster.config import Config
from learner.config import LearnerConfig
from memory_server.client import index_params
from memory_server.config import MemoryConfig

log = logging.getLogger(__name__)
SHARD_CPUS = 0.5  # CPUs one memory shard actor reserves (it scans vectors and applies reward events)
SHARD_TASK_RETRIES = 3  # a call in flight when a shard died runs again on the restarted shard: every shard method
                        # is idempotent (reads; add keyed by the memory id; forget of ids)


def trajectory_stream(cfg: Config) -> str:
    """The trajectory stream a run's rollouts feed and its learner reads: one per mode and seed, like the memory."""
    return cfg.memory.namespace


def start_pool(cfg: LLMConfig, model_path: str, timeout_s: float = 600.0,
               meanwhile: Callable[[list[Any]], None] | None = None) -> LLMPool:
    """Start ``cfg.engines`` engine actors and wait until each has served one request (needs Ray running).
    ``meanwhile(handles)`` runs while they start (an engine start is mostly one process importing after another:
    the job starts its rollout actors there)."""
    import ray

    # named, so that an actor Ray may restart (the learner) can be given the names, not handles: handles among a
    # restartable actor's constructor arguments are object-store references Ray cannot keep for a restart
    # (ray-project/ray#53727, logged as an error at every learner start)
    names = [f"epiq-llm-{secrets.token_hex(4)}-{i}" for i in range(cfg.engines)]
    actor = ray.remote(LLMEngine)
    handles = [actor.options(name=name, num_cpus=cfg.cpus_per_engine, num_gpus=cfg.gpus_per_engine,
                             resources=dict(cfg.resources), max_concurrency=MAX_CONCURRENCY).remote(cfg, model_path, i)
               for i, name in enumerate(names)]
    try:
        warm = [h.generate.remote("warm up", 1) for h in handles]  # first request costs ~1 s
        if meanwhile is not None:
            meanwhile(handles)
        ray.get(warm, timeout=timeout_s)
    except BaseException:  # do not leave half a pool running
        for h in handles:
            ray.kill(h)
        raise
    return LLMPool(handles, names)


def start_shards(cfg: MemoryConfig, redis_url: str, *, num_cpus: float = SHARD_CPUS,
                 resources: dict | None = None) -> list[Any]:
    """Create ``cfg.shards`` shard actors; Ray restarts one that dies, it rebuilds from Redis, and the calls that
    were in flight run again (``SHARD_TASK_RETRIES``)."""
    import ray

    from memory_server.shard import MemoryShard

    actor = ray.remote(MemoryShard)
    handles = [
        actor.options(name=f"memory-shard-{cfg.namespace}-{i}", num_cpus=num_cpus,
                      resources=dict(cfg.resources if resources is None else resources),
                      max_restarts=-1, max_task_retries=SHARD_TASK_RETRIES, max_concurrency=8)
        .remote(redis_url, cfg.namespace, i, cfg.shards, alpha=cfg.alpha, index=cfg.index,
                index_params=index_params(cfg), scan_threads=cfg.scan_threads, claim_idle_s=cfg.claim_idle_s,
                keep_events=cfg.keep_reward_events)
        for i in range(cfg.shards)
    ]
    ray.get([h.size.remote() for h in handles])  # wait until every shard has loaded its memories
    return handles


def start_rollout_workers(cfg: Config, model_path: str, engines: list[Any] | None, shards: list[Any] | None,
                          redis_url: str | None, first_id: int = 0, count: int | None = None) -> list[Any]:
    """``rollout.actors`` async Ray actors (or ``count`` more, numbered from ``first_id``); with the learner on,
    each puts its finished episodes on the run's trajectory stream."""
    import ray

    actor = ray.remote(RolloutWorker)
    n = cfg.rollout.actors if count is None else count
    stream = trajectory_stream(cfg) if cfg.learner.enabled else None
    return [actor.options(max_concurrency=cfg.rollout.concurrency, num_cpus=0, max_restarts=0,
                          resources=dict(cfg.rollout.resources))
            .remote(cfg.llm, cfg.env, cfg.agent, cfg.memory, model_path, engines, shards, redis_url, i,
                    trajectory_stream=stream, cache_dir=cfg.run.cache_dir,
                    adapter_with_memory_only=adapter_with_memory_only(cfg))
            for i in range(first_id, first_id + n)]


def adapter_with_memory_only(cfg: Config) -> bool:
    """``learner.memory_guided: only``: the adapter plays only the episodes that were shown a memory."""
    return cfg.learner.enabled and cfg.learner.memory_guided == "only"


def stop_actors(handles: list[Any]) -> None:
    """Kill each actor for good (no restart); one that is already gone is skipped."""
    import ray

    for h in handles:
        try:
            ray.kill(h, no_restart=True)
        except Exception:  # already gone
            pass


def attach_rollout_workers(workers: list[Any], cfg: Config, shards: list[Any] | None, redis_url: str | None,
                           timeout_s: float = 120.0) -> list[Any]:
    """Re-point live rollout actors at the memory and learner stream of ``cfg`` (the next seed or mode of a job);
    returns those that answered, in order. An actor that died or does not answer in time is killed and left out
    (the scheduler starts new ones in its place)."""
    import ray

    stream = trajectory_stream(cfg) if cfg.learner.enabled else None
    refs = [w.attach.remote(cfg.memory, shards, redis_url, stream, adapter_with_memory_only(cfg)) for w in workers]
    kept = []
    for w, ref in zip(workers, refs):
        try:
            ray.get(ref, timeout=timeout_s)
            kept.append(w)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as e:
            log.warning("rollout actor not re-attached (%s); a new one takes its place", type(e).__name__)
            stop_actors([w])
    return kept


def start_learner(cfg: LearnerConfig, model_path: str, redis_url: str, out_dir: str | Path, namespace: str,
                  engines: list[Any] | None = None, max_restarts: int = 0, timeout_s: float = 300.0,
                  initial_version: int = 0, group_size: int = 1) -> Any:
    """The learner as a threaded Ray actor (``num_cpus`` / ``num_gpus`` / ``resources`` from ``cfg``), ready to
    ``run``: ``run`` trains in one thread while ``get_version`` / ``state`` / ``stop`` answer. ``engines``: the
    engines' actor names (``LLMPool.names``) for a learner Ray may restart (``max_restarts`` > 0), or handles."""
    import ray

    from learner.learner import Learner

    actor = ray.remote(Learner).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, resources=dict(cfg.resources),
                                        max_concurrency=4, max_restarts=max_restarts)
    handle = actor.remote(cfg, model_path, redis_url, str(out_dir), namespace, engines,
                          initial_version=initial_version, group_size=group_size)
    try:
        ray.get(handle.state.remote(), timeout=timeout_s)
    except BaseException:
        ray.kill(handle)
        raise
    return handle
