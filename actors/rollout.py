"""Rollout actors: each runs many agent episodes at once on asyncio, sharing one LLM client and one memory client.

Owns: the per-process clients (vLLM pool or OpenAI endpoint, memory router with its embedder, tokenizer for
prompt budgets and the model's chat template, the learner's trajectory stream when weights are learned; ``attach``
re-points them at the next seed's or mode's memory and stream), one environment per episode with its
steps on a thread pool, and turning any environment or model error into a failed episode with its reason (the
actor goes on). A plain class that gets its own config sections; the driver makes it an async Ray actor with
``max_concurrency = rollout.concurrency`` (``cluster.wiring.start_rollout_workers``).

    worker = RolloutWorker(cfg.llm, cfg.env, cfg.agent, cfg.memory, model_path, engines, shards, redis_url)
    traj = await worker.run(EpisodeSpec(task, epoch=0, seed=0))
    worker.attach(next_seed_cfg.memory, next_shards, redis_url)   # the next seed or mode, same loaded models
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from actors.agent import ChatRenderer, EpisodeSettings, EpisodeSpec, Trajectory, run_episode
from actors.config import AgentConfig, EnvConfig, LLMConfig
from actors.contracts import LLMClient
from memory_server.config import MemoryConfig

log = logging.getLogger(__name__)


class RolloutWorker:
    """Episodes for the scheduler; ``run`` is safe to call concurrently.

    ``trajectory_stream``: the learner's stream namespace that finished episodes are put on (None: no learner).
    ``cache_dir``: where generated games live. Memory is used when ``memory.enabled``.
    """

    def __init__(self, llm: LLMConfig, env: EnvConfig, agent: AgentConfig, memory: MemoryConfig, model_path: str,
                 engines: list[Any] | None, shards: list[Any] | None, redis_url: str | None, worker_id: int = 0,
                 trajectory_stream: str | None = None, cache_dir: str = ".cache",
                 adapter_with_memory_only: bool = False) -> None:
        self.env_cfg, self.cache_dir, self.model_path, self.worker_id = env, cache_dir, model_path, worker_id
        self.llm_cfg, self.agent_cfg = llm, agent
        self.writer = f"rollout-{worker_id}"
        self.executor = ThreadPoolExecutor(max_workers=env.workers, thread_name_prefix=f"env-{worker_id}")
        self.llm = _make_llm(llm, engines)
        self.count_tokens, self.chat = _tokenizer_tools(model_path)
        self._embedders: dict[str, Any] = {}  # embedder name -> loaded model, kept across attach calls
        self.attach(memory, shards, redis_url, trajectory_stream, adapter_with_memory_only)

    def attach(self, memory: MemoryConfig, shards: list[Any] | None, redis_url: str | None,
               trajectory_stream: str | None = None, adapter_with_memory_only: bool = False) -> None:
        """Point the worker at one run's memory (config, namespace shards) and learner stream: what differs between
        the seeds and modes of a job. The tokenizer and the embedder stay loaded, so a job re-attaches its rollout
        actors instead of starting new ones (a start loads both: about 12 s on 2 cores). Call it with no episode
        in flight. ``adapter_with_memory_only`` (``learner.memory_guided: only``): episodes shown no memory are
        played by the base model."""
        self.settings = EpisodeSettings.from_sections(self.llm_cfg, self.env_cfg, self.agent_cfg, memory,
                                                      adapter_with_memory_only)
        self.memory = None
        if memory.enabled:
            from memory_server.client import MemoryClient
            from memory_server.embedder import load_embedder

            if memory.embedder not in self._embedders:
                self._embedders[memory.embedder] = load_embedder(memory.embedder)
            self.memory = MemoryClient(shards or [], redis_url or "", memory, self._embedders[memory.embedder],
                                       seed=self.worker_id)
        self.buffer = None  # with the LoRA learner on, finished episodes go to its trajectory stream
        if trajectory_stream is not None:
            from learner.buffer import TrajectoryBuffer

            self.buffer = TrajectoryBuffer(redis_url or "", trajectory_stream)

    async def run(self, spec: EpisodeSpec) -> Trajectory:
        from actors.envs import AsyncEnv, make_env

        env = AsyncEnv(make_env(self.env_cfg, cache_dir=self.cache_dir), self.executor)
        try:
            traj = await run_episode(spec, env, self.llm, self.memory, self.settings, self.count_tokens,
                                     writer=self.writer, chat=self.chat)
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


def _make_llm(cfg: LLMConfig, engines: list[Any] | None) -> LLMClient:
    if cfg.backend == "vllm":
        from actors.llm_pool import LLMPool

        return LLMPool(engines or [])
    if cfg.backend == "openai":
        from actors.openai_backend import OpenAIClient

        return OpenAIClient(cfg)
    raise ValueError(f"unknown llm.backend {cfg.backend!r}")


def _tokenizer_tools(model_path: str) -> tuple[Callable[[str], int], ChatRenderer | None]:
    """Token counts for prompt budgets and the chat template (messages -> prompt token ids) of a local model;
    without a local tokenizer ~4 characters a token and no template (an OpenAI endpoint applies its own)."""
    if not os.path.isdir(model_path):
        return (lambda text: len(text) // 4 + 1), None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)

    def count(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False))

    if not getattr(tok, "chat_template", None):
        return count, None

    def render(messages: list[dict[str, str]]) -> list[int]:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tok.encode(text, add_special_tokens=False))  # the template already holds its special tokens

    return count, render
