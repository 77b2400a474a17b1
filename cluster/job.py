"""A training job on running services: model, inference pool, memory shards, rollout actors, scheduler, summary.

Owns: the job's main loop, started through ``cluster.wiring`` — one vLLM pool for the whole job; per seed a fresh
memory namespace (``<memory.namespace>-s<seed>``) with its shard actors, the rollout actors (started once and
re-attached to each seed's memory: ``RolloutActors``), the learner when the mode trains weights (with the scheduler's admission control), and the scheduler; the held-out transfer
check (``env.heldout_seeds``: one epoch on unseen games with the memory frozen, in ``<run>/heldout``); the mode
comparison (``run.modes``: none / rag / memrl / lora / memory+lora, one sub-folder each, then the table and plot
of ``cluster.report``; what a mode switches on is ``cluster.config.MODES``) — and writing ``summary.json``. With
``run.resume`` it continues from the run folder: recorded episodes are skipped and the memory is whatever the run's
Redis kept (``redis.durable: true`` keeps it across a restart).

    summary = run_job(cfg, run_dir, redis_url)     # called by cluster.train inside LocalServices
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cluster.config import MODES, Config, with_overrides
from cluster.metrics import Recorder
from cluster.scheduler import Admission, Scheduler
from cluster.supervisor import LearnerSupervisor
from cluster.wiring import (attach_rollout_workers, start_learner, start_pool, start_rollout_workers, start_shards,
                            stop_actors, trajectory_stream)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RolloutActors:
    """The job's rollout actors, kept across its seeds and modes: each seed re-attaches them to its memory and
    learner stream (``cluster.wiring.attach_rollout_workers``) instead of starting new ones, which would load a
    tokenizer and an embedder again (about 12 s per actor on 2 cores)."""

    actors: list[Any] = dataclasses.field(default_factory=list)
    next_id: int = 0  # the id the next new actor gets (ids stay unique over the job)

    def shutdown(self) -> None:
        stop_actors(self.actors)
        self.actors = []


def seed_config(cfg: Config, seed: int) -> Config:
    """The config one seed runs with: its own memory namespace and sampling seed."""
    return dataclasses.replace(cfg, memory=dataclasses.replace(cfg.memory, namespace=f"{cfg.memory.namespace}-s{seed}"),
                               llm=dataclasses.replace(cfg.llm, seed=cfg.llm.seed + seed))


def start_inference(cfg: Config, rollouts: RolloutActors | None = None, redis_url: str | None = None) -> tuple[str, Any]:
    """Resolve (building if needed) the model, start the pool; returns (model path, pool or None for openai).
    With ``rollouts``, the job's rollout actors start while the engines do (attached to no memory yet)."""
    from actors.model_builder import resolve_model

    cache = Path(cfg.run.cache_dir)
    model_path = resolve_model(cfg.llm.model, cache)
    if cfg.llm.backend != "vllm":
        return model_path, None
    log.info("starting %d vLLM engine(s) for %s", cfg.llm.engines, model_path)

    def prestart(handles: list[Any]) -> None:
        if rollouts is None:
            return
        uses_memory = [m for m in cfg.run.modes if MODES[m].memory]
        first = mode_config(cfg, uses_memory[0]) if uses_memory else cfg  # memory on: the embedder loads now
        first = dataclasses.replace(first, learner=dataclasses.replace(first.learner, enabled=False))
        rollouts.actors = start_rollout_workers(first, model_path, handles, None, redis_url, first_id=rollouts.next_id)
        rollouts.next_id += len(rollouts.actors)

    return model_path, start_pool(cfg.llm, model_path, meanwhile=prestart)


def mode_config(cfg: Config, mode: str) -> Config:
    """The config of one compared mode (``cluster.config.MODES``): which halves learn, and how retrieval ranks,
    after the mode's own ``run.mode_overrides``."""
    m = MODES[mode]
    cfg = with_overrides(cfg, mode)
    namespace = f"{cfg.memory.namespace}-{mode.replace('+', '_')}"  # namespaces take letters, digits, _ . -
    memory = dataclasses.replace(cfg.memory, enabled=m.memory, namespace=namespace)
    if m.similarity_only:  # rag: Q neither ranks (λ = 0) nor filters (no floor)
        memory = dataclasses.replace(memory, lam=0.0, q_floor=None)
    learner = dataclasses.replace(cfg.learner, enabled=m.lora)
    llm = dataclasses.replace(cfg.llm, enable_lora=cfg.llm.enable_lora or m.lora)
    run = dataclasses.replace(cfg.run, mode_overrides={})  # applied above; a mode's config carries no others
    return dataclasses.replace(cfg, memory=memory, learner=learner, llm=llm, run=run)


def run_job(cfg: Config, run_dir: Path, redis_url: str | None, max_episodes: int | None = None) -> dict[str, Any]:
    """The whole job: one run as configured, or (``run.modes``) one run per mode in ``run_dir/<mode>`` followed by
    the comparison table and plot in ``run_dir``. One inference pool serves every mode."""
    from actors.envs import task_set

    if cfg.memory.enabled or cfg.run.modes:
        from memory_server.embedder import resolve_embedder_path

        resolve_embedder_path(cfg.memory.embedder)  # fail here, not in every rollout actor
    tasks = task_set(cfg.env, cache_dir=cfg.run.cache_dir)
    heldout = task_set(cfg.env, cache_dir=cfg.run.cache_dir, heldout=True) if cfg.env.heldout_seeds else []
    log.info("task set: %d %s tasks (%s)%s", len(tasks), cfg.env.name, cfg.env.split,
             f", {len(heldout)} held-out" if heldout else "")
    if any(MODES[m].lora for m in cfg.run.modes):  # one pool serves every mode: it must take adapters
        cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, enable_lora=True))
    from actors.envs import prepare

    rollouts = RolloutActors()
    prep = ThreadPoolExecutor(1, thread_name_prefix="prepare")  # games are generated while the engines start
    games = prep.submit(prepare, cfg.env, tasks + heldout, cfg.run.cache_dir)
    prep.shutdown(wait=False)
    try:
        model_path, pool = start_inference(cfg, rollouts, redis_url)
    except BaseException:
        rollouts.shutdown()
        raise
    try:
        games.result()
        if not cfg.run.modes:
            summary = _run_one(cfg, run_dir, run_dir.name, redis_url, tasks, heldout, model_path, pool, max_episodes,
                               rollouts)
        else:
            from cluster.report import write_report

            summary = {"modes": {}}
            for mode in cfg.run.modes:
                print(f"\nepiq: mode {mode} ({cfg.run.modes.index(mode) + 1}/{len(cfg.run.modes)})", file=sys.stderr)
                sub = run_dir / mode
                sub.mkdir(exist_ok=True)
                summary["modes"][mode] = _run_one(mode_config(cfg, mode), sub, f"{run_dir.name}/{mode}", redis_url,
                                                  tasks, heldout, model_path, pool, max_episodes, rollouts)
            report = write_report({m: run_dir / m for m in cfg.run.modes}, run_dir)
            summary.update(table=report["table"], plot=report["plot"],
                           last={m: s["last"] for m, s in summary["modes"].items()},
                           csr={m: s["csr"] for m, s in summary["modes"].items()})
    finally:
        rollouts.shutdown()
        if pool is not None:
            _run(pool.shutdown())
    summary["model"] = model_path
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _run_one(cfg: Config, run_dir: Path, run_id: str, redis_url: str | None, tasks: list[Any], heldout: list[Any],
             model_path: str, pool: Any, max_episodes: int | None,
             rollouts: RolloutActors | None = None) -> dict[str, Any]:
    """One run (every seed, every epoch, then the held-out check) into ``run_dir``; returns its summary. The
    rollout actors come from (and go back to) ``rollouts``; without it they are stopped at the end."""
    if rollouts is None:
        own = RolloutActors()
        try:
            return _run_one(cfg, run_dir, run_id, redis_url, tasks, heldout, model_path, pool, max_episodes, own)
        finally:
            own.shutdown()
    import ray

    engines = pool.handles if pool is not None else None
    group = cfg.rollout.group_size
    memories: dict[int, Any] = {}  # seed -> its memory client, for the Q statistics of each epoch row
    q_stats = (lambda seed: memories[seed].stats()) if cfg.memory.enabled else None
    recorder = Recorder(run_dir, [t.task_id for t in tasks], cfg.rollout.epochs, q_stats=q_stats, group_size=group)
    held_rec = Recorder(run_dir / "heldout", [t.task_id for t in heldout], 1, group_size=group) if heldout else None
    replaced = 0
    learner_stats: dict[int, dict] = {}
    try:
        for seed in cfg.rollout.seeds:
            scfg = seed_config(cfg, seed)
            shards, memories[seed] = _start_memory(scfg, redis_url)

            def spawn(i: int, scfg: Config = scfg, shards: Any = shards) -> Any:
                return start_rollout_workers(scfg, model_path, engines, shards, redis_url, first_id=i, count=1)[0]

            learner = _start_learner(scfg, run_dir / "learner" / f"s{seed}", model_path, pool, redis_url)
            admission = None
            if learner is not None:
                admission = Admission(learner.version, scfg.learner.max_staleness, scfg.learner.batch_size)
            kept = attach_rollout_workers(rollouts.actors, scfg, shards, redis_url) if rollouts.actors else []
            rollouts.actors = []
            sched = Scheduler(scfg, tasks, spawn, run_id=run_id, workers=kept, first_id=rollouts.next_id)
            idle = False  # True once the seed ended with nothing in flight: its actors can serve the next one
            try:
                sched.run_seed(seed, recorder, admission=admission, done=recorder.finished(seed),
                               max_episodes=max_episodes)
                if learner is not None:
                    learner_stats[seed] = learner.stop()
                    ray.kill(learner.handle, no_restart=True)
                    learner = None
                if held_rec is not None and max_episodes is None:  # transfer: unseen games, memory frozen
                    sched.run_seed(seed, held_rec, learn=False, done=held_rec.finished(seed), epochs=1, tasks=heldout)
                idle = max_episodes is None  # a max_episodes stop leaves episodes running
            finally:
                replaced += sched.replaced
                rollouts.next_id = sched.next_worker_id
                if idle:
                    rollouts.actors = list(sched.workers)
                else:
                    sched.shutdown()
                if learner is not None:
                    ray.kill(learner.handle, no_restart=True)
                if scfg.learner.enabled and pool is not None:
                    _run(pool.publish_adapter(0, ""))  # the next seed or mode starts from the base model
                stop_actors(shards or [])
    finally:
        recorder.close()
        if held_rec is not None:
            held_rec.close()
    summary = {**recorder.summary(), "replaced_actors": replaced}
    if learner_stats:
        summary["learner"] = learner_stats
    if held_rec is not None:
        summary["heldout"] = held_rec.summary()["last"]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _start_learner(cfg: Config, out_dir: Path, model_path: str, pool: Any,
                   redis_url: str | None) -> LearnerSupervisor | None:
    """With ``learner.enabled``: the learner actor for one seed (resumes from ``out_dir`` if it holds a checkpoint)
    with its training loop running, under a supervisor; else None."""
    if not cfg.learner.enabled:
        return None
    if pool is None:
        raise RuntimeError("learner.enabled needs llm.backend: vllm (the learner publishes adapters to the pool)")
    import ray

    try:
        learner = start_learner(cfg.learner, model_path, redis_url or "", out_dir, trajectory_stream(cfg),
                                engines=pool.names or pool.handles, group_size=cfg.rollout.group_size,
                                max_restarts=cfg.learner.max_restarts)
    except ray.exceptions.GetTimeoutError:
        raise RuntimeError(f"the learner actor was not placed in time: it asks for learner.num_cpus="
                           f"{cfg.learner.num_cpus}, num_gpus={cfg.learner.num_gpus}, resources={cfg.learner.resources}; "
                           f"the cluster has {ray.available_resources()} free") from None
    log.info("LoRA learner started (rank %d, batch %d, η %d)", cfg.learner.lora_rank, cfg.learner.batch_size,
             cfg.learner.max_staleness)
    return LearnerSupervisor(learner, cfg.learner.max_restarts)


def _start_memory(cfg: Config, redis_url: str | None) -> tuple[list[Any] | None, Any]:
    if not cfg.memory.enabled:
        return None, None
    from memory_server.client import MemoryClient

    shards = start_shards(cfg.memory, redis_url or "")
    log.info("memory namespace %s: %d shard(s)", cfg.memory.namespace, len(shards))
    return shards, MemoryClient(shards, redis_url or "", cfg.memory)


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)
