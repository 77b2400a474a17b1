"""Where library caches live: HF, vLLM, matplotlib and Triton caches inside the project's cache folder, offline.

The driver sets these in its own environment and passes them to every actor it starts (the actor's Ray runtime
environment), so components never set process-global state themselves. A component's own command-line entry
point (e.g. ``python -m actors.envs.distractors``) calls ``redirect_caches`` before its heavy imports.

    env = cache_env(Path(".cache"))          # {"HF_HOME": ".../.cache/huggingface", ...}
    redirect_caches(Path(".cache"))          # the same, into os.environ (existing values win)
    sha256_file(folder / "model.safetensors")  # how built model folders are checked
    build_once(models / "name-<hash>", lambda tmp: ...)   # a cache folder built once, atomically
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_env(cache_dir: str | Path) -> dict[str, str]:
    """The environment variables that point library caches into ``cache_dir`` and keep the hubs offline."""
    root = Path(cache_dir).resolve()
    return {
        "HF_HOME": str(root / "huggingface"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CACHE_ROOT": str(root / "vllm"),
        "VLLM_CONFIG_ROOT": str(root / "vllm-config"),
        "MPLCONFIGDIR": str(root / "matplotlib"),
        "TRITON_CACHE_DIR": str(root / "triton"),
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_LOGGING_LEVEL": "WARNING",  # per-engine INFO lines would flood the engine logs
    }


def redirect_caches(cache_dir: str | Path) -> dict[str, str]:
    """Set ``cache_env(cache_dir)`` in this process's environment (values already set win); returns it."""
    env = cache_env(cache_dir)
    for key, value in env.items():
        os.environ.setdefault(key, value)
    return env


def sha256_file(path: str | Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks (model weights are checked with it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_once(final: Path, build: Callable[[Path], object], marker: str = "build_info.json") -> Path:
    """The cache folder ``final``, built once: ``build(tmp)`` fills a temporary sibling that is then renamed into
    place (a folder is complete when it holds ``marker``; when another process finished first, theirs is kept)."""
    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp made it private
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
