"""epiq-tiny: deterministic weights per seed, a tokenizer that round-trips game text, a chat template, the cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from actors.model_builder import DEFAULT_MODEL, build_model, ensure_default_model, resolve_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """Seed 0 built twice and seed 1 once."""
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        path = tmp_path_factory.mktemp(f"model-{name}")
        out[name] = (path, build_model(path, seed))
    return out


def test_same_seed_same_bytes_other_seed_differs(built: dict[str, tuple[Path, dict]]) -> None:
    (pa, a), (pb, b), (_, c) = built["a"], built["b"], built["c"]
    assert a["weights_sha256"] == b["weights_sha256"]
    assert (pa / "model.safetensors").read_bytes() == (pb / "model.safetensors").read_bytes()
    assert (pa / "tokenizer.json").read_bytes() == (pb / "tokenizer.json").read_bytes()
    assert c["weights_sha256"] != a["weights_sha256"]
    assert json.loads((pa / "build_info.json").read_text()) == a


def test_model_is_a_small_float32_llama(built: dict[str, tuple[Path, dict]]) -> None:
    import torch
    from safetensors.torch import load_file

    path, info = built["a"]
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert config["vocab_size"] == info["vocab_size"] and config["hidden_size"] == 128
    tensors = load_file(str(path / "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert 100_000 < sum(t.numel() for t in tensors.values()) < 5_000_000


@pytest.mark.parametrize("text", ["go north", "take the coin from the table", "put mug 1 in/on coffeemachine 2",
                                  "You are in the kitchen. Score: 0/1 Moves: 12", "unseen Zyxwords, too!"])
def test_tokenizer_round_trips_game_text(built: dict[str, tuple[Path, dict]], text: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built["a"][0])
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    if text == "go north":
        assert len(ids) == 2  # game words are whole tokens


def test_chat_template_renders(built: dict[str, tuple[Path, dict]]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built["a"][0])
    messages = [{"role": "system", "content": "Play the game."}, {"role": "user", "content": "You see a coin."}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nPlay the game.<|im_end|>\n<|im_start|>user\nYou see a coin.<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>" and tok.convert_tokens_to_ids("<|im_start|>") != tok.unk_token_id
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_ensure_default_model_builds_once_and_resolves(tmp_path: Path) -> None:
    first = ensure_default_model(tmp_path)
    assert first.parent == tmp_path.resolve() / "models" and first.name.startswith(f"{DEFAULT_MODEL}-")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_default_model(tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # cached, not rebuilt
    assert [p.name for p in (tmp_path / "models").iterdir()] == [first.name]  # no temp folder left behind
    assert resolve_model(DEFAULT_MODEL, tmp_path) == str(first)
    assert resolve_model("/some/local/model", tmp_path) == "/some/local/model"
    assert resolve_model("org/hub-model", tmp_path) == "org/hub-model"


def test_build_refuses_a_folder_with_files(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        build_model(tmp_path)


def test_command_line_builds_the_same_weights(tmp_path: Path, built: dict[str, tuple[Path, dict]]) -> None:
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "actors.model_builder", "--out", str(out), "--seed", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "build_info.json").read_text())["weights_sha256"] == built["a"][1]["weights_sha256"]
