"""The one strict config tree: dataclasses that mirror the YAML files in ``configs/`` 1:1.

Owns: every config key, its type, default and one-line doc (``field(metadata={"doc": ...})``), range
checks (``__post_init__``), loading YAML strictly (unknown keys, wrong types and bad ranges are
``ConfigError`` naming the full key path), ``--set a.b.c=value`` overrides and dumping the resolved config.
Imports nothing heavy, so a bad config fails in milliseconds.

    python -m cluster.config configs/quickstart.yaml --set memory.lam=0.3   # print the resolved config
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config problem the user must fix; the message names the file or key path."""


class FieldError(ValueError):
    """Raised by ``__post_init__`` checks; the loader prefixes the field's full key path."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def doc(default: Any, text: str) -> Any:
    """A dataclass field with a default and a one-line doc (lists and dicts are copied per instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


def _check(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise FieldError(name, message)


def _non_negative(obj: Any, *names: str) -> None:
    for name in names:
        _check(getattr(obj, name) >= 0, name, f"must be >= 0, got {getattr(obj, name)}")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        _check(getattr(obj, name) > 0, name, f"must be > 0, got {getattr(obj, name)}")


@dataclass
class ClusterConfig:
    """Where Ray runs and what it may use."""

    address: str | None = doc(None, "Ray address to join (e.g. 'auto', 'ray://head:10001'); null starts a local Ray. RAY_ADDRESS wins over it.")
    num_cpus: int | None = doc(None, "CPUs a local Ray may use; null = all cores.")
    num_gpus: int | None = doc(None, "GPUs a local Ray may use; null = autodetect.")
    object_store_mb: int = doc(512, "Object store size of a local Ray, in MiB (Ray's default would take ~30% of RAM in /dev/shm).")
    dashboard: bool = doc(False, "Start the Ray dashboard with a local Ray (needed for `ray job submit` against it).")
    namespace: str = doc("epiq", "Ray namespace for named actors of this project.")

    def __post_init__(self) -> None:
        _positive(self, "object_store_mb")
        for name in ("num_cpus", "num_gpus"):
            if getattr(self, name) is not None:
                _non_negative(self, name)


@dataclass
class RedisConfig:
    """The Redis-compatible server behind the memory (started locally unless ``url`` is set)."""

    url: str | None = doc(None, "redis:// URL of an existing server; null starts a local valkey server on a free loopback port.")
    password_env: str = doc("EPIQ_REDIS_PASSWORD", "Environment variable holding the password for `url` (never put it in the file).")
    durable: bool = doc(False, "Append-only persistence (AOF) for the local server, so acknowledged writes survive a restart.")
    appendfsync: Literal["always", "everysec", "no"] = doc("everysec", "AOF fsync policy when durable.")
    start_timeout_s: float = doc(10.0, "Seconds to wait for a local server to answer PING.")

    def __post_init__(self) -> None:
        _positive(self, "start_timeout_s")


@dataclass
class MemoryConfig:
    """MemRL episodic memory: value-aware two-phase retrieval and utility updates (defaults from the paper)."""

    enabled: bool = doc(True, "Use the episodic memory (false = no-memory baseline, or LoRA-only with learner.enabled).")
    shards: int = doc(1, "Number of memory shard actors.")
    namespace: str = doc("default", "Memory namespace (one per benchmark / tenant).")
    embedder: str = doc("all-MiniLM-L6-v2", "Sentence embedder: 'all-MiniLM-L6-v2' (offline wheel) or a local SentenceTransformer folder.")
    delta: float = doc(0.3, "Phase A similarity threshold δ: candidates need cosine > δ.")
    k1: int = doc(5, "Phase A: candidates kept by similarity.")
    k2: int = doc(3, "Phase B: memories injected into the prompt.")
    lam: float = doc(0.5, "Phase B weight λ of the z-scored Q against z-scored similarity (0 = similarity-only RAG).")
    alpha: float = doc(0.3, "Utility learning rate α in Q <- Q + α(r - Q).")
    q_init: float = doc(0.0, "Q of a newly written memory (of a success memory when q_init_failure is set).")
    q_init_failure: float | None = doc(None, "Q of a new memory written by a failed episode; null = q_init (as published). Setting it to q_init + alpha * (reward_failure - q_init) counts the writing episode as the memory's first (failed) use.")
    q_floor: float | None = doc(None, "Phase B drops candidates with Q below this; null = no floor.")
    epsilon: float = doc(0.0, "Probability of an ε-greedy exploration pick in Phase B.")
    capacity: int = doc(100_000, "Maximum memories per namespace; beyond it the lowest-value memories are evicted.")
    evict_age_weight: float = doc(0.1, "Eviction value = Q - evict_age_weight * age in days (0 = by utility only).")
    q_clip: float = doc(3.0, "Phase B clips the z-scored Q to ±q_clip (as the MemRL code does).")
    index: Literal["exact", "approx"] = doc("exact", "Shard vector index: exact scan, or approximate (HNSW) for large shards.")
    hnsw_m: int = doc(16, "Approximate index: HNSW graph degree M (more = better recall, more memory, slower build).")
    hnsw_ef_construction: int = doc(100, "Approximate index: HNSW build beam (more = better graph, slower build).")
    hnsw_ef_search: int = doc(256, "Approximate index: HNSW query beam (more = better recall, slower queries; at least k1 is used). 256: recall@10 0.99 at 100k memories per shard; use 512 for shards of about 1M (recall 0.97; `epiq bench memory`).")
    scan_threads: int = doc(0, "BLAS threads of a shard's exact scan; 0 = as Ray sets it (one per whole CPU the shard reserves). 2 cuts a 100k-memory scan from ~14 to ~8 ms when cores are free.")
    index_threads: int = doc(0, "Threads a shard uses to build its approximate index when it (re)starts; 0 = every core the shard process may use.")
    resources: dict[str, float] = doc({}, "Ray custom resources each memory shard actor requires, e.g. {rollout: 1} to place it on the `rollout` worker group (k8s/).")
    shard_timeout_s: float = doc(2.0, "A retrieval waits this long for each shard, then returns what the others found.")
    claim_idle_s: float = doc(30.0, "Reward events pending this long on a dead consumer are reclaimed by a live one.")
    reward_success: float = doc(1.0, "Reward sent to injected memories when the episode succeeds.")
    reward_failure: float = doc(-1.0, "Reward sent to injected memories when the episode fails.")

    def __post_init__(self) -> None:
        _positive(self, "shards", "k1", "k2", "capacity", "q_clip", "shard_timeout_s", "claim_idle_s", "hnsw_m",
                  "hnsw_ef_construction", "hnsw_ef_search")
        _non_negative(self, "evict_age_weight", "index_threads", "scan_threads")
        _check(-1.0 <= self.delta <= 1.0, "delta", f"must be in [-1, 1], got {self.delta}")
        _check(0.0 <= self.lam <= 1.0, "lam", f"must be in [0, 1], got {self.lam}")
        _check(0.0 < self.alpha <= 1.0, "alpha", f"must be in (0, 1], got {self.alpha}")
        _check(0.0 <= self.epsilon <= 1.0, "epsilon", f"must be in [0, 1], got {self.epsilon}")
        _check(self.k2 <= self.k1, "k2", f"must be <= k1 ({self.k1}), got {self.k2}")
        for name in ("q_init", "q_init_failure", "q_floor"):
            v = getattr(self, name)
            _check(v is None or math.isfinite(v), name, f"must be a finite number, got {v}")


@dataclass
class LLMConfig:
    """The inference pool (vLLM engines) or an OpenAI-compatible endpoint."""

    backend: Literal["vllm", "openai"] = doc("vllm", "'vllm': Ray actors holding vLLM engines; 'openai': any OpenAI-compatible server (memory-only).")
    model: str = doc("epiq-tiny", "'epiq-tiny' (built by the project) or a local Hugging Face model folder / hub id.")
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
        _positive(self, "engines", "cpus_per_engine", "max_model_len", "max_new_tokens", "kv_cache_mb", "max_lora_rank", "max_loras")
        _non_negative(self, "temperature", "gpus_per_engine", "seed")
        _check(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.max_new_tokens < self.max_model_len, "max_new_tokens", f"must be < max_model_len ({self.max_model_len})")
        _check(self.backend != "openai" or bool(self.base_url), "base_url", "is required when backend is 'openai'")


@dataclass
class EnvConfig:
    """The environment the agents play."""

    name: Literal["textworld", "alfworld"] = doc("textworld", "Environment family.")
    data_dir: str | None = doc(None, "Game files (ALFWorld: the unpacked json_2.1.1 parent folder; default $ALFWORLD_DATA). TextWorld games are generated into the cache.")
    split: str = doc("train", "Task split: 'train'/'eval' for TextWorld, 'valid_seen'/'valid_unseen'/'valid_train' for ALFWorld.")
    challenge: str = doc("tw-coin_collector", "TextWorld challenge passed to its generator.")
    level: int = doc(105, "TextWorld challenge level.")
    num_tasks: int = doc(20, "Tasks in the task set.")
    task_seed: int = doc(1000, "First game seed; tasks use task_seed .. task_seed + num_tasks - 1.")
    task_seeds: list[int] = doc([], "TextWorld: explicit game seeds (overrides task_seed/num_tasks), e.g. the distractor groups of actors/envs/distractors.py.")
    heldout_seeds: list[int] = doc([], "TextWorld: unseen games played once after the last epoch with the memory frozen (transfer check); empty = none.")
    max_steps: int = doc(20, "Step limit per episode.")
    workers: int = doc(2, "Threads per rollout actor that step environments off the event loop.")

    def __post_init__(self) -> None:
        _positive(self, "num_tasks", "max_steps", "workers")
        _non_negative(self, "level", "task_seed")
        _check(len(set(self.task_seeds)) == len(self.task_seeds), "task_seeds", "has duplicates")
        _check(not set(self.task_seeds) & set(self.heldout_seeds), "heldout_seeds",
               f"must not overlap task_seeds (both hold {sorted(set(self.task_seeds) & set(self.heldout_seeds))})")


@dataclass
class AgentConfig:
    """How the agent prompts the model and writes experiences."""

    prompt_style: Literal["auto", "full", "plan"] = doc("auto", "'full': task, experiences, history, observation, actions (instruction models); 'plan': the best experience as a script with a step marker (the layout epiq-tiny is trained on); 'auto': plan for epiq-tiny, else full.")
    history: int = doc(4, "Recent (action, observation) pairs in a 'full' prompt.")
    experience_writer: Literal["template", "llm"] = doc("template", "Failure reflections from a deterministic template, or the template plus a one-sentence lesson written by the LLM.")
    reflection_tokens: int = doc(48, "Maximum tokens of an LLM-written lesson.")

    def __post_init__(self) -> None:
        _positive(self, "reflection_tokens")
        _non_negative(self, "history")

    def style_for(self, model: str) -> str:
        """The prompt style for ``model`` ('auto' resolves by model name)."""
        if self.prompt_style != "auto":
            return self.prompt_style
        return "plan" if model == "epiq-tiny" else "full"


@dataclass
class RolloutConfig:
    """Rollout actors and the scheduler (the MemRL protocol: epochs over a task set)."""

    actors: int = doc(1, "Number of rollout actors.")
    concurrency: int = doc(8, "Episodes each rollout actor runs at once.")
    max_in_flight: int = doc(16, "Episodes dispatched but not finished, over all actors.")
    mode: Literal["async", "sync"] = doc("async", "'async': continuous dispatch; 'sync': a barrier after each batch.")
    epochs: int = doc(10, "Passes over the task set.")
    seeds: list[int] = doc([0], "Run seeds; each seed is a separate run of all epochs.")
    resources: dict[str, float] = doc({}, "Ray custom resources each rollout actor requires, e.g. {rollout: 1} to place it on the `rollout` worker group (k8s/).")
    max_retries: int = doc(2, "Times an episode whose actor died is re-dispatched.")
    group_size: int = doc(1, "Episodes of each task per epoch, dispatched together and sampled independently (GRPO groups for the learner); every mode plays the same number.")

    def __post_init__(self) -> None:
        _positive(self, "actors", "concurrency", "max_in_flight", "epochs", "group_size")
        _non_negative(self, "max_retries")
        _check(len(self.seeds) > 0, "seeds", "needs at least one seed")


@dataclass
class LearnerConfig:
    """The optional AReaL-style asynchronous LoRA learner."""

    enabled: bool = doc(False, "Train a LoRA adapter on the agents' trajectories and hot-swap it into the pool.")
    lora_rank: int = doc(8, "LoRA rank r.")
    lora_alpha: float = doc(16.0, "LoRA scaling alpha.")
    target_modules: list[str] = doc(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "Modules that get LoRA weights.")
    lr: float = doc(1e-4, "AdamW learning rate.")
    batch_size: int = doc(16, "Trajectories per learner step.")
    max_staleness: int = doc(4, "η: a trajectory is trained on only if current version - its version <= η.")
    publish_interval: int = doc(1, "Learner steps between adapter publications.")
    clip_eps: float = doc(0.2, "PPO ratio clip ε.")
    grad_clip: float = doc(1.0, "Gradient norm clip.")
    num_gpus: float = doc(0.0, "GPUs for the learner actor.")
    resources: dict[str, float] = doc({}, "Ray custom resources each learner actor requires, e.g. {learner: 1} to place it on the `learner` worker group (k8s/).")
    num_cpus: float = doc(1.0, "CPUs for the learner actor (also its torch thread count on CPU).")
    minibatches: int = doc(1, "Optimizer updates per learner step: the batch is split in this many parts; the proximal policy is the one at the start of the step, so clipping acts from the second update on.")
    micro_batch: int = doc(16, "Sequences (turns) per forward/backward pass; gradients are accumulated over them.")
    checkpoint_interval: int = doc(1, "Learner steps between checkpoints; trajectories are acknowledged in the buffer only once a checkpoint covers them.")
    behav_weight_cap: float | None = doc(None, "Upper bound on the decoupled weight pi_prox/pi_behav per token; null = uncapped.")
    kl_coef: float = doc(0.0, "Weight of a KL(pi_theta || base model) penalty per token (GRPO's beta; 0 = none, as AReaL). Costs one more forward pass per step.")
    loss_agg: Literal["token-mean", "trajectory-mean"] = doc("trajectory-mean", "How the loss averages tokens: 'token-mean' weighs every token alike (long failed episodes outweigh short wins); 'trajectory-mean' gives every trajectory the same weight.")

    def __post_init__(self) -> None:
        _positive(self, "lora_rank", "lora_alpha", "lr", "batch_size", "publish_interval", "clip_eps", "grad_clip",
                  "minibatches", "micro_batch", "checkpoint_interval")
        _non_negative(self, "max_staleness", "num_gpus", "num_cpus", "kl_coef")
        _check(self.minibatches <= self.batch_size, "minibatches", f"must be <= batch_size ({self.batch_size}), got {self.minibatches}")
        _check(bool(self.target_modules), "target_modules", "must name at least one module")
        _check(not any(m in ("embed_tokens", "lm_head") for m in self.target_modules), "target_modules",
               "embed_tokens / lm_head cannot take LoRA here (tied embeddings; vLLM serves projection LoRA only)")
        if self.behav_weight_cap is not None:
            _check(self.behav_weight_cap > 0, "behav_weight_cap", f"must be > 0, got {self.behav_weight_cap}")


MODES = ("none", "rag", "memrl", "memory", "lora", "memory+lora")  # "memory" = memrl (the issue-6 name)


@dataclass
class RunConfig:
    """The run folder: resolved config, metrics, logs, service temp dirs."""

    output_dir: str = doc("runs", "Parent folder of run folders (relative to the working directory).")
    name: str | None = doc(None, "Run folder name; null = '<config name>-<timestamp>'.")
    resume: bool = doc(False, "Continue the run in an existing run folder instead of refusing to overwrite it.")
    cache_dir: str = doc(".cache", "Cache for built models, generated games and library caches (HF, vLLM, matplotlib).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = doc("INFO", "Logging level of the driver.")
    modes: list[str] = doc([], "Compare modes on the same tasks, seeds and scheduler, one sub-folder each, then a table and plot: none, rag (λ=0), memrl or memory (memory.lam), lora, memory+lora. Empty = one run as configured.")

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        _check(not bad, "modes", f"unknown mode(s) {bad}; expected any of {list(MODES)}")
        _check(len(set(self.modes)) == len(self.modes), "modes", "has duplicates")


@dataclass
class Config:
    """The whole run: one section per component."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig, metadata={"doc": "Ray cluster."})
    redis: RedisConfig = field(default_factory=RedisConfig, metadata={"doc": "Redis-compatible server."})
    memory: MemoryConfig = field(default_factory=MemoryConfig, metadata={"doc": "Episodic memory (MemRL)."})
    llm: LLMConfig = field(default_factory=LLMConfig, metadata={"doc": "Inference pool."})
    env: EnvConfig = field(default_factory=EnvConfig, metadata={"doc": "Environment."})
    agent: AgentConfig = field(default_factory=AgentConfig, metadata={"doc": "Agent prompts and experiences."})
    rollout: RolloutConfig = field(default_factory=RolloutConfig, metadata={"doc": "Rollouts and scheduler."})
    learner: LearnerConfig = field(default_factory=LearnerConfig, metadata={"doc": "LoRA learner."})
    run: RunConfig = field(default_factory=RunConfig, metadata={"doc": "Run folder."})

    def __post_init__(self) -> None:
        _check(not self.learner.enabled or self.llm.enable_lora, "learner",
               "learner.enabled needs llm.enable_lora: true (the pool must serve the adapters it publishes)")
        _check(not self.learner.enabled or self.llm.backend == "vllm", "learner",
               "learner.enabled needs llm.backend: vllm (an OpenAI endpoint cannot take new adapters)")
        _check(self.learner.lora_rank <= self.llm.max_lora_rank, "learner",
               f"learner.lora_rank ({self.learner.lora_rank}) exceeds llm.max_lora_rank ({self.llm.max_lora_rank})")


# --------------------------------------------------------------------------- strict conversion

def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if _is_optional(tp):
        return _type_name(_strip_optional(tp)) + " or null"
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if typing.get_origin(tp) is dict:
        k, v = typing.get_args(tp)
        return f"mapping of {_type_name(k)} to {_type_name(v)}"
    return getattr(tp, "__name__", str(tp))


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _strip_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0]


_EXPONENT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints widen to float, exponent notation without a dot
    (``1e-3``, a string to YAML 1.1) reads as a float; nothing else is coerced."""
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if _is_optional(tp):
        return None if value is None else _convert(value, _strip_optional(tp), path)
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path} = {value!r}: must be {_type_name(tp)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path} = {value!r}: expected {_type_name(tp)}")
        return [_convert(v, typing.get_args(tp)[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} = {value!r}: expected {_type_name(tp)}")
        kt, vt = typing.get_args(tp)
        return {_convert(k, kt, f"{path} key"): _convert(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _EXPONENT.match(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{path} = {value!r}: expected {_type_name(tp)}, got {type(value).__name__}")


def _unknown_key(key: str, cls: type, path: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    full = f"{path}.{key}" if path else key
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = f" (did you mean '{path + '.' if path else ''}{close[0]}'?)" if close else ""
    return ConfigError(f"unknown key '{full}'{hint}; valid keys{' in ' + path if path else ''}: {', '.join(names)}")


def _build(cls: type, data: Any, path: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(str(key), cls, path)
        kwargs[key] = _convert(value, hints[key], f"{path}.{key}" if path else key)
    try:
        return cls(**kwargs)
    except FieldError as e:
        raise ConfigError(f"{path + '.' if path else ''}{e.name}: {e}") from None


# --------------------------------------------------------------------------- overrides

def _field_type(path: str) -> Any:
    """The annotation of a dotted key path, or ConfigError naming the unknown part."""
    tp: Any = Config
    walked = ""
    for part in path.split("."):
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"--set {path}: '{walked}' is a value, not a section")
        if part not in {f.name for f in dataclasses.fields(tp)}:
            raise _unknown_key(part, tp, walked)
        tp = typing.get_type_hints(tp)[part]
        walked = f"{walked}.{part}" if walked else part
    return tp


def _coerce(text: str, tp: Any, path: str) -> Any:
    """Turn a --set string into a value for ``tp``: strings stay strings, the rest is parsed as YAML."""
    bare = _strip_optional(tp) if _is_optional(tp) else tp
    if _is_optional(tp) and text.strip().lower() in ("null", "none", "~"):
        return None
    if bare is str or (typing.get_origin(bare) is Literal and all(isinstance(a, str) for a in typing.get_args(bare))):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {path}={text}: not a valid value ({e.problem if hasattr(e, 'problem') else e})") from None


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` to the raw YAML dict in place (types are checked when it is built)."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. memory.lam=0.5")
    tp = _field_type(key)
    if dataclasses.is_dataclass(tp):
        raise ConfigError(f"--set {key}: '{key}' is a section; set one of its keys")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{part}' in the file is not a mapping")
        node = child
    node[parts[-1]] = _coerce(text, tp, key)


# --------------------------------------------------------------------------- load / dump

def read_yaml(path: str | Path) -> dict:
    """Read a config file into a dict; a missing file or YAML syntax error is a ConfigError with file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        raise ConfigError(f"{where}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: YAML error: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def build(raw: dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a validated Config from a raw dict plus ``a.b.c=value`` overrides."""
    raw = dict(raw)
    for assignment in overrides:
        apply_override(raw, assignment)
    return _build(Config, raw)


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load and validate a YAML config file; every problem is a ConfigError with a clear message."""
    return build(read_yaml(path), overrides)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: Config) -> str:
    """The resolved config as YAML, in field order (loads back to an equal Config)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def reference_markdown() -> str:
    """Every key with its type, default and doc, as markdown tables (the README's config reference)."""
    out: list[str] = []
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        cls = hints[section.name]
        out.append(f"### `{section.name}` — {cls.__doc__.strip()}\n")
        out.append("| key | type | default | meaning |\n|---|---|---|---|")
        sub_hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
            type_text = _type_name(sub_hints[f.name]).replace("|", "\\|")
            out.append(f"| `{section.name}.{f.name}` | {type_text} | `{shown}` | {f.metadata['doc']} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    from cluster.cli import main

    sys.exit(main(["config", *sys.argv[1:]]))
