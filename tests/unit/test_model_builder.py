"""epiq-tiny: deterministic weights per seed, a tokenizer that round-trips game text, a chat template, the cache,
and training samples in the agent's plan layout.

The full build trains for minutes; these tests build a reduced one (``SMALL``: a few games, a few steps), with
the training games generated once per module into a shared cache folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from actors import model_builder
from actors.model_builder import DEFAULT_MODEL, build_model, ensure_default_model, resolve_model
from actors.policy_data import SEED_BASE, GameRecord, render
from actors.prompting import build_prompt, experience_text, parse_action

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(games=3, heldout_games=1, steps=4, eval_every=2, batch_size=8)


@pytest.fixture(scope="module")
def games_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("games")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, games_cache: Path) -> dict[str, tuple[Path, dict]]:
    """Seed 0 built twice and seed 1 once (reduced training)."""
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        path = tmp_path_factory.mktemp(f"model-{name}")
        out[name] = (path, build_model(path, seed, games_cache, **SMALL))
    return out


def test_same_seed_same_bytes_other_seed_differs(built: dict[str, tuple[Path, dict]]) -> None:
    (pa, a), (pb, b), (_, c) = built["a"], built["b"], built["c"]
    assert a["weights_sha256"] == b["weights_sha256"]
    assert (pa / "model.safetensors").read_bytes() == (pb / "model.safetensors").read_bytes()
    assert (pa / "tokenizer.json").read_bytes() == (pb / "tokenizer.json").read_bytes()
    assert c["weights_sha256"] != a["weights_sha256"]
    assert json.loads((pa / "build_info.json").read_text()) == a
    assert a["training"]["train_seeds"][0] >= SEED_BASE >= 500_000  # never an evaluation seed


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


def test_ensure_default_model_builds_once_and_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_builder, "TRAIN_SPEC", {**model_builder.TRAIN_SPEC, **SMALL})  # also a new cache key
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
    with pytest.raises(ValueError, match="unknown training settings"):
        build_model(tmp_path / "new", stepz=3)


def test_command_line_builds_the_same_weights(tmp_path: Path, built: dict[str, tuple[Path, dict]],
                                              games_cache: Path) -> None:
    out = tmp_path / "cli"
    small = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    proc = subprocess.run([sys.executable, "-m", "actors.model_builder", "--out", str(out), "--seed", "0",
                           "--cache-dir", str(games_cache), *small], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "build_info.json").read_text())["weights_sha256"] == built["a"][1]["weights_sha256"]


RECORD = GameRecord(seed=SEED_BASE, level=103, goal="Find the coin and take it.",
                    walkthrough=("go north", "go east", "take coin"),
                    observations=("-= Bar =- You are in a bar. There is an exit to the north.",
                                  "-= Attic =- You are in an attic. Try going East.", "-= Study =- A coin is here."),
                    admissible=(("go north", "go west", "look"), ("go east", "go south", "look"),
                                ("go west", "look", "take coin")))
OTHER = GameRecord(seed=SEED_BASE + 1, level=103, goal="Find the coin and take it.", walkthrough=("go south", "take coin"),
                   observations=("-= Hall =-", "-= Den =-"), admissible=(("go south",), ("take coin",)))


def test_samples_are_the_agents_plan_prompt() -> None:
    import random

    prompt, target = render(RECORD, 1, "correct", OTHER, random.Random(0), permute=False)
    assert prompt == build_prompt("plan", RECORD.goal, RECORD.observations[1], list(RECORD.admissible[1]),
                                  [experience_text(True, list(RECORD.walkthrough), RECORD.goal, "")], [], len, 1000,
                                  step=1)
    assert prompt.startswith("memory: go north ; >> go east ; take coin ; end\n") and prompt.endswith("\n>")
    assert target == " go east\n" and parse_action(target, list(RECORD.admissible[1])) == "go east"
    wrong, _ = render(RECORD, 0, "wrong", OTHER, random.Random(0), permute=False)
    assert wrong.startswith("memory: >> go south ; take coin ; end\n")
    assert render(RECORD, 0, "none", OTHER, random.Random(0))[0].startswith("memory: none\n")
    assert render(RECORD, 2, "failed", OTHER, random.Random(0))[0].startswith("memory: failed ")


def test_direction_relabelling_keeps_the_sample_true() -> None:
    import random

    for seed in range(20):
        prompt, target = render(RECORD, 1, "correct", OTHER, random.Random(seed))
        memory, room, actions, tail = prompt.split("\n")
        assert memory.split(">> ")[1].split(" ;")[0] == target.strip()  # the marked command is the target
        listed = actions.removeprefix("actions: ").split(" | ")
        assert target.strip() in listed and listed == sorted(listed)
        assert room.endswith(f"Try going {target.split()[1].capitalize()}.")  # the room text is relabelled too
