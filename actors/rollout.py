"""Rollout actors: each runs many agent episodes at once on asyncio, sharing one LLM client and one memory client.

Owns: the per-process clients (vLLM pool or OpenAI endpoint, memory router with its embedder, tokenizer for
prompt budgets), one environment per episode with its steps on a thread pool, and turning any environment or
model error into a failed episode with its reason (the actor goes on). A plain class; the cluster makes it an
async Ray actor with ``max_concurrency = rollout.concurrency`` (``start_rollout_workers``).

    worker = RolloutWorker(cfg, model_path, engines, shards, redis_url, worker_id=0)
    traj = await worker.run(EpisodeSpec(task, epoch=0, seed=0))
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from actors.agent import EpisodeSpec, Trajectory, run_episode
from cluster.config import Config

log = logging.getLogger(__name__)


def learner_namespace(cfg: Config) -> str:
    """The trajectory stream a run's rollouts feed and its learner reads: one per mode and seed, like the memory."""
    return cfg.memory.namespace


class RolloutWorker:
    """Episodes for the scheduler; ``run`` is safe to call concurrently."""

    def __init__(self, cfg: Config, model_path: str, engines: list[Any] | None, shards: list[Any] | None,
                 redis_url: str | None, worker_id: int = 0) -> None:
        from cluster.services import redirect_caches

        redirect_caches(__import__("pathlib").Path(cfg.run.cache_dir))
        self.cfg, self.model_path, self.worker_id = cfg, model_path, worker_id
        self.writer = f"rollout-{worker_id}"
        self.executor = ThreadPoolExecutor(max_workers=cfg.env.workers, thread_name_prefix=f"env-{worker_id}")
        self.llm = self._make_llm(engines)
        self.memory = None
        if cfg.memory.enabled:
            from memory_server.client import MemoryClient
            from memory_server.embedder import load_embedder

            self.memory = MemoryClient(shards or [], redis_url or "", cfg.memory, load_embedder(cfg.memory.embedder),
                                       seed=worker_id)
        self.count_tokens = self._token_counter()
        self.buffer = None  # with the LoRA learner on, finished episodes go to its trajectory stream
        if cfg.learner.enabled:
            from learner.buffer import TrajectoryBuffer

            self.buffer = TrajectoryBuffer(redis_url or "", learner_namespace(cfg))

    def _make_llm(self, engines: list[Any] | None) -> Any:
        if self.cfg.llm.backend == "vllm":
            from actors.llm_pool import LLMPool

            return LLMPool(engines or [])
        if self.cfg.llm.backend == "openai":
            from actors.openai_backend import OpenAIClient

            return OpenAIClient(self.cfg.llm)
        raise ValueError(f"unknown llm.backend {self.cfg.llm.backend!r}")

    def _token_counter(self):
        """Token counts for prompt budgets: the model's tokenizer when it is local, else ~4 characters a token."""
        if os.path.isdir(self.model_path):
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.model_path)
            return lambda text: len(tok.encode(text, add_special_tokens=False))
        return lambda text: len(text) // 4 + 1

    async def run(self, spec: EpisodeSpec) -> Trajectory:
        from actors.envs import AsyncEnv, make_env

        env = AsyncEnv(make_env(self.cfg.env, cache_dir=self.cfg.run.cache_dir), self.executor)
        try:
            traj = await run_episode(spec, env, self.llm, self.memory, self.cfg, self.count_tokens,
                                     model_id=self.cfg.llm.model, writer=self.writer)
        finally:
            await env.close()
        if self.buffer is not None and spec.learn and traj.error is None:
            try:
                await asyncio.to_thread(self.buffer.put, traj)
            except Exception as e:  # Redis unreachable: the episode is reported failed with the reason
                traj.error = f"trajectory buffer: {type(e).__name__}: {e}"
                log.warning("episode %s: %s", spec.episode_id, traj.error)
        return traj

    def pid(self) -> int:
        return os.getpid()


def start_rollout_workers(cfg: Config, model_path: str, engines: list[Any] | None, shards: list[Any] | None,
                          redis_url: str | None, first_id: int = 0, count: int | None = None) -> list[Any]:
    """``rollout.actors`` async Ray actors (or ``count`` more, numbered from ``first_id``)."""
    import ray

    actor = ray.remote(RolloutWorker)
    n = cfg.rollout.actors if count is None else count
    return [actor.options(max_concurrency=cfg.rollout.concurrency, num_cpus=0, max_restarts=0,
                          resources=dict(cfg.rollout.resources))
            .remote(cfg, model_path, engines, shards, redis_url, i) for i in range(first_id, first_id + n)]
