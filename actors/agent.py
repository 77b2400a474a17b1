"""The agent: one async episode — retrieve, prompt, act, step, reward, feedback, write a memory — as a typed result.

Owns: ``run_episode`` (the unit of work of a rollout actor) and the typed episode records (``EpisodeSpec``,
``Turn``, ``Trajectory``). Prompt layouts, action parsing and experience texts are in ``actors.prompting``.
No blocking calls: environments run in threads, the LLM and the memory are awaited.

    traj = await run_episode(spec, env, llm, memory, cfg)      # Trajectory(won, reward, turns, retrieved_ids, ...)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actors.prompting import build_prompt, experience_text, parse_action, reflection_prompt
from cluster.config import Config




@dataclass
class EpisodeSpec:
    """What the scheduler dispatches: one task, in one epoch, of one seed (ids are deterministic, so retries dedupe)."""

    task: Any  # actors.envs.base.TaskSpec
    epoch: int
    seed: int
    attempt: int = 0
    learn: bool = True  # False: frozen-memory evaluation (no feedback, no writes)
    run_id: str = ""  # the run folder's name: episodes of different runs never share ids in a shared Redis
    sample: int = 0  # which of the task's ``rollout.group_size`` episodes in this epoch (a GRPO group)

    @property
    def episode_id(self) -> str:
        group = f"-g{self.sample}" if self.sample else ""
        return f"{self.run_id}/s{self.seed}-e{self.epoch}-{self.task.task_id}{group}"


@dataclass
class Turn:
    """One LLM call: the tokens the learner trains on and the version that produced them."""

    prompt_ids: list[int]
    output_ids: list[int]
    logprobs: list[float]
    adapter_version: int
    action: str
    observation: str


@dataclass
class Trajectory:
    """The result of one episode; ``error`` is set (and ``won`` False) when the episode could not be played."""

    episode_id: str
    task_id: str
    epoch: int
    seed: int
    sample: int = 0
    won: bool = False
    reward: float = 0.0
    steps: int = 0
    actions: list[str] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    retrieved_ids: list[str] = field(default_factory=list)
    retrieval_scores: list[float] = field(default_factory=list)
    retrieval_pool: int = 0
    memory_version: int = 0
    adapter_versions: list[int] = field(default_factory=list)
    written_memory_id: str | None = None
    error: str | None = None
    generated_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The JSON-able line of the run's episodes.jsonl (tokens left out)."""
        return {k: v for k, v in self.__dict__.items() if k != "turns"}


async def run_episode(spec: EpisodeSpec, env: Any, llm: Any, memory: Any | None, cfg: Config,
                      count_tokens: Callable[[str], int] = lambda s: len(s) // 4 + 1,
                      model_id: str = "", writer: str = "") -> Trajectory:
    """Play one episode of ``spec.task`` and learn from it (memory feedback + a new memory) unless ``spec.learn`` is off."""
    traj = Trajectory(spec.episode_id, spec.task.task_id, spec.epoch, spec.seed, spec.sample)
    t_start = time.perf_counter()
    timings = {"env": 0.0, "llm": 0.0, "memory": 0.0}
    style = cfg.agent.style_for(cfg.llm.model)
    try:
        t0 = time.perf_counter()
        obs = await env.reset(spec.task)
        timings["env"] += time.perf_counter() - t0

        # 1. retrieve experiences for the task's intent
        experiences: list[str] = []
        if memory is not None:
            t0 = time.perf_counter()
            got = await memory.retrieve(obs.intent, episode_id=spec.episode_id)
            timings["memory"] += time.perf_counter() - t0
            shown = 1 if style == "plan" else len(got.records)  # the plan layout shows the best experience only:
            experiences = [r.experience for r in got.records[:shown]]  # only what the model saw gets the reward
            traj.retrieved_ids, traj.retrieval_scores = got.ids[:shown], got.scores[:shown]
            traj.retrieval_pool, traj.memory_version = len(got.pool), got.memory_version

        # 2. act until done or out of steps
        history: list[tuple[str, str]] = []
        observation, admissible, done, won = obs.text, obs.admissible_actions, False, False
        for step_no in range(cfg.env.max_steps):
            prompt = build_prompt(style, obs.goal, observation, admissible, experiences,
                                  history[-cfg.agent.history:] if cfg.agent.history else [], count_tokens,
                                  cfg.llm.max_model_len - cfg.llm.max_new_tokens - 8, step=step_no)
            t0 = time.perf_counter()
            gen = await llm.generate(prompt, max_tokens=cfg.llm.max_new_tokens, temperature=cfg.llm.temperature,
                                     top_p=cfg.llm.top_p, stop=["\n"])
            timings["llm"] += time.perf_counter() - t0
            action = parse_action(gen.text, admissible)
            t0 = time.perf_counter()
            step = await env.step(action)
            timings["env"] += time.perf_counter() - t0
            traj.turns.append(Turn(gen.prompt_token_ids, gen.output_token_ids, gen.logprobs, gen.adapter_version, action,
                                   step.observation))
            traj.generated_tokens += len(gen.output_token_ids)
            traj.actions.append(action)
            history.append((action, step.observation))
            observation, admissible, done, won = step.observation, step.admissible_actions, step.done, step.won
            if done:
                break
        traj.won, traj.steps = bool(won), len(traj.actions)
        traj.reward = cfg.memory.reward_success if traj.won else cfg.memory.reward_failure
        traj.adapter_versions = sorted({t.adapter_version for t in traj.turns})

        # 3. learn: reward the injected memories, write this episode as a new memory
        if memory is not None and spec.learn:
            t0 = time.perf_counter()
            if traj.retrieved_ids:
                await asyncio.to_thread(memory.feedback, spec.episode_id, traj.retrieved_ids, traj.reward,
                                        adapter_version=max(traj.adapter_versions or [0]))
            lesson = ""
            if not traj.won and cfg.agent.experience_writer == "llm":
                t1 = time.perf_counter()
                gen = await llm.generate(reflection_prompt(obs.goal, traj.actions, observation),
                                         max_tokens=cfg.agent.reflection_tokens, temperature=0.0, stop=["\n"])
                timings["llm"] += time.perf_counter() - t1
                lesson = gen.text
            traj.written_memory_id = await memory.write_episode(
                episode_id=spec.episode_id, intent=obs.intent,
                experience=experience_text(traj.won, traj.actions, obs.goal, observation, lesson=lesson),
                won=traj.won, task_id=spec.task.task_id, env=cfg.env.name, model_id=model_id,
                adapter_version=max(traj.adapter_versions or [0]), writer=writer, retrieved_ids=traj.retrieved_ids)
            timings["memory"] += time.perf_counter() - t0
    except Exception as e:  # translate: the episode fails with its reason, the actor goes on
        traj.error = f"{type(e).__name__}: {e}"
        traj.won = False
    timings["total"] = time.perf_counter() - t_start
    traj.timings = {k: round(v, 4) for k, v in timings.items()}
    return traj
