"""The contracts the agent is written against: what an LLM client and a memory client offer, and what a
generation returns.

``LLMClient`` is met by ``actors.llm_pool.LLMPool`` (vLLM engines) and ``actors.openai_backend.OpenAIClient``
(any OpenAI-compatible server); ``MemoryAPI`` by ``memory_server.client.MemoryClient``. ``run_episode`` (the
agent), the benchmarks and a future gateway use only these names, so a new backend implements a Protocol, not a
base class.

    async def act(llm: LLMClient, prompt: str) -> str:
        return (await llm.generate(prompt, max_tokens=8)).text
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the memory's result type; imported for annotations only (keeps this module light)
    from memory_server.client import Retrieval


@dataclass
class GenerationResult:
    """One finished request; plain lists and scalars, so it travels cheaply between Ray processes."""

    text: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    logprobs: list[float]  # log-probability of each sampled token (vLLM raw logprobs)
    adapter_version: int  # 0 = base model
    finish_reason: str | None = None  # 'stop' | 'length' | None


class LLMClient(Protocol):
    """Text (or token ids) in, one completion out, tagged with the adapter version that produced it."""

    async def generate(self, prompt: str | list[int], max_tokens: int = 16, temperature: float = 0.0,
                       top_p: float = 1.0, stop: list[str] | None = None,
                       choices: list[str] | None = None, min_tokens: int = 0,
                       adapter: bool = True) -> GenerationResult: ...
    # adapter=False: the base model answers even when a LoRA adapter is served (adapter_version 0)


class MemoryAPI(Protocol):
    """MemRL's episodic memory as the agent uses it: retrieve for an intent, reward what was shown, write an episode."""

    async def retrieve(self, query: str, *, episode_id: str | None = None) -> Retrieval: ...

    async def feedback(self, episode_id: str, memory_ids: Sequence[str], reward: float, *,
                       adapter_version: int = 0) -> int: ...

    async def write_episode(self, *, episode_id: str, intent: str, experience: str, won: bool, task_id: str,
                            env: str, model_id: str, adapter_version: int, writer: str,
                            retrieved_ids: list[str]) -> str: ...
