"""The one strict config tree: the root that mirrors the YAML files in ``configs/`` 1:1, and its loader.

Each component owns its section next to its code (``actors/config.py``: llm, env, agent;
``memory_server/config.py``: memory; ``learner/config.py``: learner); this module owns the driver's own
sections (cluster, redis, rollout, run), the root ``Config`` with its cross-section checks, loading YAML strictly
(unknown keys, wrong types and bad ranges are ``ConfigError`` naming the full key path), ``--set a.b.c=value``
overrides, dumping the resolved config and the reference of every key. Imports nothing heavy, so a bad config
fails in milliseconds.

    epiq config configs/quickstart.yaml --set memory.lam=0.3     # print the resolved config
    epiq config --reference                                      # every key, type, default and doc
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

from actors.config import AgentConfig, EnvConfig, LLMConfig
from common.config import FieldError, check, doc, non_negative, positive
from learner.config import LearnerConfig
from memory_server.config import MemoryConfig

__all__ = ["AgentConfig", "ClusterConfig", "Config", "ConfigError", "EnvConfig", "LLMConfig", "LearnerConfig",
           "MemoryConfig", "RedisConfig", "RolloutConfig", "RunConfig", "build", "dump", "load", "reference_markdown",
           "with_overrides"]


class ConfigError(ValueError):
    """A config problem the user must fix; the message names the file or key path."""


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
        positive(self, "object_store_mb")
        for name in ("num_cpus", "num_gpus"):
            if getattr(self, name) is not None:
                non_negative(self, name)


@dataclass
class RedisConfig:
    """The Redis-compatible server behind the memory (started locally unless ``url`` is set)."""

    url: str | None = doc(None, "redis:// URL of an existing server; null starts a local valkey server on a free loopback port.")
    password_env: str = doc("EPIQ_REDIS_PASSWORD", "Environment variable holding the password for `url` (never put it in the file).")
    durable: bool = doc(False, "Append-only persistence (AOF) for the local server, so acknowledged writes survive a restart.")
    appendfsync: Literal["always", "everysec", "no"] = doc("everysec", "AOF fsync policy when durable.")
    start_timeout_s: float = doc(10.0, "Seconds to wait for a local server to answer PING.")

    def __post_init__(self) -> None:
        positive(self, "start_timeout_s")


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
        positive(self, "actors", "concurrency", "max_in_flight", "epochs", "group_size")
        non_negative(self, "max_retries")
        check(len(self.seeds) > 0, "seeds", "needs at least one seed")


@dataclass(frozen=True)
class Mode:
    """What one compared mode (``run.modes``) switches on."""

    memory: bool  # episodic memory: retrieve, reward, write
    lora: bool  # the LoRA learner trains and publishes adapters
    similarity_only: bool = False  # rag: retrieval ranks by similarity alone (λ = 0, no Q floor)


MODE_SECTIONS = ("memory", "learner")  # what run.mode_overrides may change per mode
MODE_OWNED = ("memory.enabled", "memory.namespace", "learner.enabled")  # ... except what the mode itself sets
MODES: dict[str, Mode] = {  # the one table of what a mode means (cluster.job.mode_config applies it)
    "none": Mode(memory=False, lora=False),
    "rag": Mode(memory=True, lora=False, similarity_only=True),
    "memrl": Mode(memory=True, lora=False),
    "memory": Mode(memory=True, lora=False),  # = memrl (the issue-6 name, kept for existing configs)
    "lora": Mode(memory=False, lora=True),
    "memory+lora": Mode(memory=True, lora=True),
}


@dataclass
class RunConfig:
    """The run folder: resolved config, metrics, logs, service temp dirs."""

    output_dir: str = doc("runs", "Parent folder of run folders (relative to the working directory).")
    name: str | None = doc(None, "Run folder name; null = '<config name>-<timestamp>'.")
    resume: bool = doc(False, "Continue the run in an existing run folder instead of refusing to overwrite it.")
    cache_dir: str = doc(".cache", "Cache for built models, generated games and library caches (HF, vLLM, matplotlib).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = doc("INFO", "Logging level of the driver.")
    verbose: bool = doc(False, "Stream every actor's output (vLLM engines, Ray workers) to the terminal; false = it stays in the run folder's Ray logs (`<run>/ray/session_latest/logs/worker-*`) and the terminal shows the driver's lines, the progress line and errors (`epiq train --verbose`).")
    modes: list[str] = doc([], "Compare modes on the same tasks, seeds and scheduler, one sub-folder each, then a table and plot: none, rag (λ=0), memrl or memory (memory.lam), lora, memory+lora. Empty = one run as configured.")
    mode_overrides: dict[str, list[str]] = doc({}, "Per compared mode, `memory.*` / `learner.*` overrides in `--set` form applied to that mode only, e.g. `{memory+lora: [learner.replay=0]}`; every other key is shared by all modes so they stay comparable.")

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        check(not bad, "modes", f"unknown mode(s) {bad}; expected any of {list(MODES)}")
        check(len(set(self.modes)) == len(self.modes), "modes", "has duplicates")
        bad = [m for m in self.mode_overrides if m not in MODES]
        check(not bad, "mode_overrides", f"unknown mode(s) {bad}; expected any of {list(MODES)}")
        for mode, assignments in self.mode_overrides.items():
            for a in assignments:
                key = a.partition("=")[0].strip()
                check(key.split(".", 1)[0] in MODE_SECTIONS, "mode_overrides",
                      f"{mode}: {a!r} is not a memory.* or learner.* key (the other sections are shared by all modes)")
                check(key not in MODE_OWNED, "mode_overrides", f"{mode}: {key} is set by the mode itself (run.modes)")


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
        check(not self.learner.enabled or self.llm.enable_lora, "learner",
               "learner.enabled needs llm.enable_lora: true (the pool must serve the adapters it publishes)")
        check(not self.learner.enabled or self.llm.backend == "vllm", "learner",
               "learner.enabled needs llm.backend: vllm (an OpenAI endpoint cannot take new adapters)")
        check(not (self.learner.enabled and self.learner.memory_guided == "only" and not self.memory.enabled),
              "learner", "learner.memory_guided: only needs memory.enabled: true (without a memory no episode is "
              "guided, so the adapter would never train nor play); set it for memory+lora in run.mode_overrides")
        check(self.learner.lora_rank <= self.llm.max_lora_rank, "learner",
               f"learner.lora_rank ({self.learner.lora_rank}) exceeds llm.max_lora_rank ({self.llm.max_lora_rank})")
        for mode in self.run.mode_overrides:  # a bad key or value fails at load time, not when the mode starts
            _overridden(self, mode)


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
    if tp is float and isinstance(value, str) and _EXPONENT.match(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # .nan / .inf would pass range checks and fail only mid-run
            raise ConfigError(f"{path} = {value!r}: must be a finite number")
        return float(value)
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
    except ConfigError:  # already names its key (run.mode_overrides, checked in Config)
        raise
    except FieldError as e:  # a section's check names its field: report the full key path
        raise ConfigError(f"{path + '.' if path else ''}{e.name}: {e}") from None
    except ValueError as e:  # any other check of a component's section: at least name the section
        raise ConfigError(f"{path or 'config'}: {e}") from None


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
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a text file ({e.reason} at byte {e.start}); a config is UTF-8 YAML") from None
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


def _overridden(cfg: Config, mode: str) -> Config:
    """``cfg`` rebuilt with ``run.mode_overrides[mode]`` applied on top of what the mode itself switches on (so an
    override is checked as its mode will run), with no mode overrides of its own."""
    raw = to_dict(cfg)
    raw["run"]["mode_overrides"] = {}
    raw["memory"]["enabled"], raw["learner"]["enabled"] = MODES[mode].memory, MODES[mode].lora
    raw["llm"]["enable_lora"] = raw["llm"]["enable_lora"] or MODES[mode].lora
    try:
        return build(raw, cfg.run.mode_overrides[mode])
    except ConfigError as e:
        raise ConfigError(f"run.mode_overrides.{mode}: {e}") from None


def with_overrides(cfg: Config, mode: str) -> Config:
    """``cfg`` with ``run.mode_overrides[mode]`` applied and the mode's own switches set (the memory and learner
    sections, ``llm.enable_lora``); the rest, ``run.mode_overrides`` included, is ``cfg``'s."""
    if not cfg.run.mode_overrides.get(mode):
        return cfg
    changed = _overridden(cfg, mode)
    return dataclasses.replace(cfg, memory=changed.memory, learner=changed.learner, llm=changed.llm)


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load and validate a YAML config file; every problem is a ConfigError with a clear message."""
    return build(read_yaml(path), overrides)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def redact_url(url: str) -> str:
    """``url`` with its credentials (``user:password@``) shown as ``***``."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def dump(cfg: Config) -> str:
    """The resolved config as YAML, in field order; it loads back to an equal Config, except that credentials in
    ``redis.url`` are shown as ``***`` (the run folder's config.yaml never holds a password)."""
    data = to_dict(cfg)
    if data["redis"]["url"]:
        data["redis"]["url"] = redact_url(data["redis"]["url"])
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


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

