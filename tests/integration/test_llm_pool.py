"""The inference pool on real Ray with one vLLM-CPU engine serving epiq-tiny: tokens, logprobs, choices, LoRA swaps.

One module-scoped pool (engine start is the expensive part); the LoRA adapter is made with peft on the same model.
The balancing and core-binding logic is checked without Ray, against fake handles.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from actors.llm_pool import GenerationResult, LLMPool, engine_cores

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "You are in the kitchen. You see a coin and a door to the north. >"


@pytest.fixture(scope="module")
def model_path(tiny_model: Path) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def pool(llm_pool: LLMPool) -> LLMPool:
    """The session-wide engine (conftest), serving the base model: other modules may have left an adapter on it."""
    asyncio.run(llm_pool.publish_adapter(0, ""))
    return llm_pool


@pytest.fixture(scope="module")
def adapter(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-8 LoRA on every projection, with large random A and B so that it changes greedy outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.normal_(0.0, 1.0)
    out = tmp_path_factory.mktemp("lora-v1")
    peft_model.save_pretrained(out)
    return out


def run(coro):
    return asyncio.run(coro)


def _scale_lora_b(adapter_dir: Path, factor: float) -> None:
    """Multiply every lora_B weight of a saved adapter by ``factor`` (0 = an adapter that changes nothing)."""
    from safetensors.torch import load_file, save_file

    path = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(str(path))
    save_file({k: (v * factor if "lora_B" in k else v) for k, v in tensors.items()}, str(path))


@pytest.mark.slow
def test_generate_returns_text_tokens_and_logprobs(pool: LLMPool, model_path: Path) -> None:
    from transformers import AutoTokenizer

    result = run(pool.generate(PROMPT, max_tokens=8))
    assert isinstance(result, GenerationResult)
    assert result.adapter_version == 0
    assert result.prompt_token_ids == AutoTokenizer.from_pretrained(model_path).encode(PROMPT)
    assert 1 <= len(result.output_token_ids) <= 8 and isinstance(result.text, str)
    assert len(result.logprobs) == len(result.output_token_ids)
    assert all(lp <= 0.0 for lp in result.logprobs)
    assert result.finish_reason in ("stop", "length")
    again = run(pool.generate(result.prompt_token_ids, max_tokens=8))  # token-id prompts work the same (greedy)
    assert again.output_token_ids == result.output_token_ids


@pytest.mark.slow
def test_quick_batch_throughput(pool: LLMPool) -> None:
    async def batch(n: int) -> list[GenerationResult]:
        return await asyncio.gather(*(pool.generate(f"{PROMPT} step {i}", max_tokens=32, temperature=1.0)
                                      for i in range(n)))

    started = time.monotonic()
    results = run(batch(16))
    elapsed = time.monotonic() - started
    tokens = sum(len(r.output_token_ids) for r in results)
    print(f"\nbatch of 16: {tokens} tokens in {elapsed:.2f} s = {tokens / elapsed:.0f} tok/s")
    assert len(results) == 16 and tokens > 0


@pytest.mark.slow
@pytest.mark.parametrize("choices", [["go north", "take coin"], ["open door", "examine table", "inventory"]])
def test_choices_force_one_of_the_strings(pool: LLMPool, choices: list[str]) -> None:
    for temperature in (0.0, 1.0):
        result = run(pool.generate(PROMPT, max_tokens=2, temperature=temperature, choices=choices))
        assert result.text in choices
        assert result.adapter_version == 0


@pytest.mark.slow
def test_publish_adapter_swaps_new_requests_only(pool: LLMPool, adapter: Path) -> None:
    long = 192
    base_short = run(pool.generate(PROMPT, max_tokens=8))
    base_long = run(pool.generate("go north", max_tokens=long))

    async def swap_while_running() -> tuple[GenerationResult, GenerationResult, bool]:
        running = asyncio.create_task(pool.generate("go north", max_tokens=long))
        await asyncio.sleep(0.3)  # the long request is in the engine, on version 0
        await pool.publish_adapter(1, str(adapter))
        still_running = not running.done()
        after = await pool.generate(PROMPT, max_tokens=8)
        return await running, after, still_running

    old, new, still_running = run(swap_while_running())
    assert still_running, "the long request finished before the publish; make it longer"
    assert old.adapter_version == 0 and len(old.output_token_ids) == len(base_long.output_token_ids)
    # it started on the base weights: its first tokens (generated alone, before the publish) are the base model's.
    # Later tokens may differ from a base-only run: the new request joining the batch can flip a near-tie greedy
    # token of the trained model, and greedy decoding then diverges; the version it reports is what is bound.
    assert old.output_token_ids[:8] == base_long.output_token_ids[:8]
    assert new.adapter_version == 1
    assert new.output_token_ids != base_short.output_token_ids  # the adapter changes the greedy output
    assert run(pool.health())[0]["adapter_version"] == 1

    run(pool.publish_adapter(0, ""))  # back to the base model
    reverted = run(pool.generate(PROMPT, max_tokens=8))
    assert reverted.adapter_version == 0 and reverted.output_token_ids == base_short.output_token_ids


@pytest.mark.slow
def test_bad_publish_is_an_error_and_the_engine_keeps_serving(pool: LLMPool, adapter: Path, tmp_path: Path) -> None:
    import ray

    with pytest.raises(ray.exceptions.RayTaskError, match="LoRA|lora"):
        run(pool.publish_adapter(7, str(tmp_path / "missing")))
    run(pool.publish_adapter(7, str(adapter)))  # the failed attempt did not claim the version
    served = run(pool.generate(PROMPT, max_tokens=8))
    assert served.adapter_version == 7
    # the same version number from another folder (a new learner run) is a new adapter, not vLLM's cached one
    other = tmp_path / "other-adapter"
    shutil.copytree(adapter, other)
    _scale_lora_b(other, 0.0)  # zero update: this adapter serves exactly the base model's outputs
    run(pool.publish_adapter(7, str(other)))
    again = run(pool.generate(PROMPT, max_tokens=8))
    run(pool.publish_adapter(0, ""))
    base = run(pool.generate(PROMPT, max_tokens=8))
    assert again.adapter_version == 7 and again.output_token_ids == base.output_token_ids != served.output_token_ids


# --------------------------------------------------------------------------- without Ray


class _Method:
    def __init__(self, fn) -> None:
        self.remote = fn


class _FakeEngine:
    """Stands in for an actor handle: ``generate.remote(...)`` returns an awaitable, like a Ray ObjectRef."""

    def __init__(self, index: int, gate: asyncio.Event) -> None:
        self.index, self.gate, self.calls = index, gate, 0

        async def generate(*args) -> GenerationResult:
            self.calls += 1
            await self.gate.wait()
            return GenerationResult("", [], [], [], adapter_version=self.index)

        self.generate = _Method(generate)


def test_pool_sends_to_the_least_busy_engine() -> None:
    async def scenario() -> list[int]:
        gate = asyncio.Event()
        engines = [_FakeEngine(i, gate) for i in range(3)]
        pool = LLMPool(engines)
        tasks = [asyncio.create_task(pool.generate("x")) for _ in range(7)]
        await asyncio.sleep(0)
        counts = [e.calls for e in engines]
        gate.set()
        await asyncio.gather(*tasks)
        assert pool._outstanding == [0, 0, 0]
        return counts

    assert sorted(run(scenario())) == [2, 2, 3]


def test_engine_cores_give_each_engine_its_own_cores() -> None:
    assert [engine_cores(i, 1, [0, 1]) for i in range(3)] == [[0], [1], [0]]
    assert [engine_cores(i, 2, [0, 1, 2, 3]) for i in range(2)] == [[0, 1], [2, 3]]
    assert engine_cores(0, 1, [4, 7]) == [4]
