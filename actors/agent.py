"""The agent: one async episode — retrieve, prompt, act, step, reward, feedback, write a memory — as a typed result.

Owns: ``run_episode`` (the unit of work of a rollout actor), ``EpisodeSettings`` (the few config values an
episode reads, built from the llm / env / agent / memory sections) and the typed episode records
(``EpisodeSpec``, ``Turn``, ``Trajectory``). It is written against the contracts of ``actors.contracts``
(``LLMClient``, ``MemoryAPI``); prompt layouts, action parsing and experience texts are in ``actors.prompting``.
No blocking calls: environments run in threads, the LLM and the memory are awaited.

    settings = EpisodeSettings.from_sections(cfg.llm, cfg.env, cfg.agent, cfg.memory)
    traj = await run_episode(spec, env, llm, memory, settings)   # Trajectory(won, reward, turns, retrieved_ids, ...)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from actors.contracts import LLMClient, MemoryAPI
from actors.prompting import build_messages, build_prompt, experience_text, reflection_prompt
from actors.replies import parse_reply
from common.timer import Timer

if TYPE_CHECKING:
    from actors.config import AgentConfig, EnvConfig, LLMConfig
    from actors.envs.base import AsyncEnv
    from memory_server.config import MemoryConfig


@dataclass(frozen=True)
class EpisodeSettings:
    """What one episode reads from the config; ``from_sections`` builds it from the sections that own the values."""

    style: str  # prompt layout: 'plan' | 'full' (agent.prompt_style resolved for the model)
    max_steps: int  # env.max_steps
    history: int = 4  # agent.history
    max_new_tokens: int = 16  # llm.max_new_tokens
    temperature: float = 0.0  # llm.temperature
    top_p: float = 1.0  # llm.top_p
    prompt_budget: int = 1000  # prompt tokens: llm.max_model_len - max_new_tokens - 8
    reward_success: float = 1.0  # memory.reward_success
    reward_failure: float = -1.0  # memory.reward_failure
    experience_writer: str = "template"  # agent.experience_writer
    reflection_tokens: int = 48  # agent.reflection_tokens
    env_name: str = ""  # env.name, recorded in a memory's provenance
    model_id: str = ""  # llm.model, recorded in a memory's provenance
    adapter_with_memory_only: bool = False  # learner.memory_guided = only: no memory shown -> the base model plays

    @classmethod
    def from_sections(cls, llm: LLMConfig, env: EnvConfig, agent: AgentConfig, memory: MemoryConfig,
                      adapter_with_memory_only: bool = False) -> EpisodeSettings:
        return cls(style=agent.style_for(llm.model), max_steps=env.max_steps, history=agent.history,
                   max_new_tokens=llm.max_new_tokens, temperature=llm.temperature, top_p=llm.top_p,
                   prompt_budget=llm.max_model_len - llm.max_new_tokens - 8, reward_success=memory.reward_success,
                   reward_failure=memory.reward_failure, experience_writer=agent.experience_writer,
                   reflection_tokens=agent.reflection_tokens, env_name=env.name, model_id=llm.model,
                   adapter_with_memory_only=adapter_with_memory_only)


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
    rewarded: bool = False  # the reward event for retrieved_ids reached the memory's streams (durable from then on)
    error: str | None = None
    generated_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The JSON-able line of the run's episodes.jsonl (tokens left out)."""
        return {k: v for k, v in self.__dict__.items() if k != "turns"}


ChatRenderer = Callable[[list[dict[str, str]]], list[int]]  # messages -> prompt token ids (the chat template)
# Where a reply ends early: a game command is one line; code and SQL end with their block's closing fence (the
# explanation a chat model adds after it is not generated); a worked solution runs to the end of the turn.
STOPS: dict[str, list[str]] = {"command": ["\n"], "code": ["\n```\n"], "sql": ["\n```\n"]}


def _chat_prompt(chat: ChatRenderer, reply: str, task_text: str, admissible: list[str], experiences: list[str],
                 history: list[tuple[str, str]], count_tokens: Callable[[str], int], budget: int) -> list[int]:
    """The turn's prompt through the chat template, within ``budget`` tokens as rendered (one tighter retry)."""
    ids = chat(build_messages(reply, task_text, admissible, experiences, history, count_tokens, budget))
    if len(ids) > budget:
        tighter = max(1, budget - (len(ids) - budget))
        ids = chat(build_messages(reply, task_text, admissible, experiences, history, count_tokens, tighter))
    return ids


async def run_episode(spec: EpisodeSpec, env: AsyncEnv, llm: LLMClient, memory: MemoryAPI | None,
                      settings: EpisodeSettings, count_tokens: Callable[[str], int] = lambda s: len(s) // 4 + 1,
                      writer: str = "", chat: ChatRenderer | None = None) -> Trajectory:
    """Play one episode of ``spec.task`` and learn from it (memory feedback + a new memory) unless ``spec.learn`` is off.

    ``chat``: the model's chat template (messages -> token ids); with it the 'full' layout is sent as chat turns and
    the learner sees exactly the rendered tokens. The reply is parsed by the task's kind (``Observation.reply``):
    a command for games, a code block, one SQL statement, or a final number."""
    traj = Trajectory(spec.episode_id, spec.task.task_id, spec.epoch, spec.seed, spec.sample)
    timer = Timer("env", "llm", "memory")
    st = settings
    try:
        with timer("total"):
            with timer("env"):
                obs = await env.reset(spec.task)

            # 1. retrieve experiences for the task's intent
            experiences: list[str] = []
            if memory is not None:
                with timer("memory"):
                    got = await memory.retrieve(obs.intent, episode_id=spec.episode_id)
                shown = 1 if st.style == "plan" else len(got.records)  # the plan layout shows the best experience
                experiences = [r.experience for r in got.records[:shown]]  # only: only what the model saw is rewarded
                traj.retrieved_ids, traj.retrieval_scores = got.ids[:shown], got.scores[:shown]
                traj.retrieval_pool, traj.memory_version = len(got.pool), got.memory_version

            # 2. act until done or out of steps (with the adapter, unless it is kept for memory-guided episodes)
            adapter = not (st.adapter_with_memory_only and not traj.retrieved_ids)
            reply = obs.reply
            use_chat = chat is not None and st.style == "full"
            task_text = f"Task: {obs.goal.strip()}\n{obs.text.strip()}" if reply == "command" else obs.text
            history: list[tuple[str, str]] = []
            attempts: list[str] = []  # what an experience keeps: parsed code / SQL, the worked solution for math
            observation, admissible, won = obs.text, obs.admissible_actions, False
            for step_no in range(st.max_steps):
                window = history[-st.history:] if st.history else []
                prompt: str | list[int]
                if use_chat:
                    prompt = _chat_prompt(chat, reply, task_text, admissible, experiences, window, count_tokens,
                                          st.prompt_budget)
                else:
                    prompt = build_prompt(st.style, obs.goal, observation, admissible, experiences, window,
                                          count_tokens, st.prompt_budget, step=step_no)
                with timer("llm"):
                    gen = await llm.generate(prompt, max_tokens=st.max_new_tokens, temperature=st.temperature,
                                             top_p=st.top_p, stop=STOPS.get(reply), adapter=adapter)
                action = parse_reply(reply, gen.text, admissible, entry_point=obs.info.get("entry_point"))
                with timer("env"):
                    step = await env.step(action)
                traj.turns.append(Turn(gen.prompt_token_ids, gen.output_token_ids, gen.logprobs, gen.adapter_version,
                                       action, step.observation))
                traj.generated_tokens += len(gen.output_token_ids)
                traj.actions.append(action)
                attempts.append(gen.text if reply == "number" else action)
                history.append((action if reply == "command" or not use_chat else gen.text, step.observation))
                observation, admissible, won = step.observation, step.admissible_actions, step.won
                if step.done:
                    break
            traj.won, traj.steps = bool(won), len(traj.actions)
            traj.reward = st.reward_success if traj.won else st.reward_failure
            traj.adapter_versions = sorted({t.adapter_version for t in traj.turns})

            # 3. learn: reward the injected memories, write this episode as a new memory
            if memory is not None and spec.learn:
                version = max(traj.adapter_versions or [0])
                lesson = ""
                if not traj.won and st.experience_writer == "llm":
                    with timer("llm"):
                        gen = await llm.generate(reflection_prompt(obs.goal, traj.actions, observation),
                                                 max_tokens=st.reflection_tokens, temperature=0.0, stop=["\n"],
                                                 adapter=adapter)
                    lesson = gen.text
                with timer("memory"):
                    if traj.retrieved_ids:
                        await memory.feedback(spec.episode_id, traj.retrieved_ids, traj.reward,
                                              adapter_version=version)
                        traj.rewarded = True
                    traj.written_memory_id = await memory.write_episode(
                        episode_id=spec.episode_id, intent=obs.intent,
                        experience=experience_text(traj.won, attempts, obs.goal, observation, lesson=lesson,
                                                   reply=reply),
                        won=traj.won, task_id=spec.task.task_id, env=st.env_name, model_id=st.model_id,
                        adapter_version=version, writer=writer, retrieved_ids=traj.retrieved_ids)
    except Exception as e:  # translate: the episode fails with its reason, the actor goes on
        traj.error = f"{type(e).__name__}: {e}"
        traj.won = False
    traj.timings = timer.as_dict()
    return traj
