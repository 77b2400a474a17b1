"""The project's small default model "epiq-tiny": a locally trained tokenizer and a random-init LLaMA.

Owns: the built-in text-game corpus, training a byte-level BPE tokenizer on it (no downloads), the tiny
LLaMA config, building both deterministically (same seed -> byte-identical ``model.safetensors``, its sha256
in ``build_info.json``), the cache folder ``<cache_dir>/models/epiq-tiny-<hash>`` (built once, atomically),
and resolving ``llm.model`` ("epiq-tiny" -> that folder; anything else passes through unchanged).

    python -m actors.model_builder --out /tmp/epiq-tiny [--seed 0]     # build into a new folder
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "epiq-tiny"
BUILDER_VERSION = "1"  # bump when the build procedure changes (spec and corpus changes already change the cache key)

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]
PAD, BOS, EOS, IM_START, IM_END = SPECIAL_TOKENS
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MODEL_SPEC: dict[str, Any] = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
    max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5, initializer_range=0.02,
    tie_word_embeddings=True,
)

# --------------------------------------------------------------------------- the built-in corpus

DIRECTIONS = "north south east west up down northeast northwest southeast southwest".split()
VERBS = ("go take drop open close examine look inventory put insert unlock lock eat drink cook slice chop dice "
         "prepare use heat cool clean toggle move push pull read wait find get give fill empty turn wear remove "
         "search check score quit help").split()
OBJECTS = ("coin key door chest box table counter fridge oven stove knife apple banana bread egg milk water "
           "lettuce tomato potato carrot onion pepper meal cookbook book letter note map lamp candle sofa bed "
           "shelf drawer cabinet desk chair mug cup plate bowl pan pot kettle towel soapbar sink sinkbasin "
           "bathtub toilet mirror window safe trunk crate case basket bin garbagecan microwave coffeemachine "
           "toaster countertop diningtable sidetable dresser armchair laptop pencil pen phone remote "
           "creditcard keychain watch vase statue painting pillow blanket newspaper spatula ladle fork spoon "
           "saltshaker peppershaker bottle can glass soap sponge cloth candle television torch sword shield "
           "gate portal hatch passage exit entrance key ring gem gold silver wooden iron glass red blue green "
           "yellow white black small large old new").split()
ROOMS = ("kitchen bedroom bathroom living room corridor hallway pantry garden backyard cellar attic "
         "basement study office library garage shed street yard porch balcony lobby chamber vault cave "
         "forest clearing bridge tunnel workshop laundry closet spare dining").split()
WORDS = ("you are in a an the of to on at from with into onto inside there here is it this that your my "
         "see can cannot nothing something and or not no yes what where which who which has have had was "
         "were be been being i me we they he she them its as if then else when while for by about above "
         "below under over next behind all any some each other another only also just now already still "
         "task goal objective memory memories experience experiences success failure succeeded failed "
         "reward step steps action actions admissible commands command observation history previous "
         "current plan reflection retrieved episode trajectory done won lost game score points welcome "
         "textworld alfworld room rooms way leads lead closed opened locked unlocked empty full hot cold "
         "clean dirty sliced chopped diced cooked roasted fried grilled raw carrying holding nothing "
         "middle looking quickly around arrive arrived enter entered leave left right front back first "
         "second third last try again better should would could must need needed because so but then "
         "after before until put placed found take took taken picked dropped moved turned toggled").split()
DIGITS = list("0123456789")
PUNCTUATION = list(".,;:!?'\"()[]{}<>-_/+=*#>|")


def corpus() -> list[str]:
    """Deterministic training text: the word lists plus templated game sentences and commands."""
    lines = [" ".join(DIRECTIONS), " ".join(VERBS), " ".join(OBJECTS), " ".join(ROOMS), " ".join(WORDS),
             " ".join(DIGITS), " ".join(PUNCTUATION), "".join(DIGITS), "".join(PUNCTUATION)]
    for d in DIRECTIONS:
        lines += [f"go {d}", f"> go {d}", f"There is an exit to the {d}.", f"You go {d}."]
    for i, obj in enumerate(OBJECTS):
        room = ROOMS[i % len(ROOMS)]
        n = i % 10
        lines += [f"take {obj}", f"take the {obj}", f"drop {obj}", f"open {obj} {n}", f"examine {obj} {n}",
                  f"put {obj} {n} in/on {OBJECTS[(i + 7) % len(OBJECTS)]} {(n + 3) % 10}",
                  f"You are in the {room}. You see a {obj} {n} and a door to the {DIRECTIONS[i % len(DIRECTIONS)]}.",
                  f"Your task is to: put a clean {obj} in {OBJECTS[(i + 3) % len(OBJECTS)]}.",
                  f"-= {room.capitalize()} =- You arrive in the {room}. You take the {obj} from the table."]
    lines += ["Welcome to TextWorld! Your objective is to find the coin. Score: 0/1 Moves: 12",
              "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a drawer 2.",
              "Nothing happens.", "That's not a verb I recognise.", "You won!", "You lost!", "*** The End ***",
              "Memory (success): go east ; take coin ; end", "Reflection: I should have opened the door first."]
    return lines


# --------------------------------------------------------------------------- building

def _build_tokenizer(out: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4096, min_frequency=1, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=IM_END, pad_token=PAD,
                                   additional_special_tokens=[EOS, IM_START], chat_template=CHAT_TEMPLATE,
                                   model_max_length=MODEL_SPEC["max_position_embeddings"])
    fast.save_pretrained(out)
    return fast


def _build_model(out: Path, tokenizer: Any, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=ids[BOS], eos_token_id=ids[IM_END],
                         pad_token_id=ids[PAD], **MODEL_SPEC)
    config.dtype = "float32"
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=ids[BOS], eos_token_id=[ids[IM_END], ids[EOS]], pad_token_id=ids[PAD]).save_pretrained(out)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_model(out: Path, seed: int = 0) -> dict[str, Any]:
    """Build epiq-tiny into ``out`` (created; must not hold files) and return its build info."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; pick a new folder for the model")
    tokenizer = _build_tokenizer(out)
    _build_model(out, tokenizer, seed)
    info = {"name": DEFAULT_MODEL, "builder_version": BUILDER_VERSION, "seed": seed, "vocab_size": len(tokenizer),
            "weights_sha256": sha256_file(out / "model.safetensors"),
            "tokenizer_sha256": sha256_file(out / "tokenizer.json"), **MODEL_SPEC}
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def cache_key(seed: int = 0) -> str:
    """Short hash naming the cache folder: builder version, seed, model spec, corpus and special tokens."""
    text = json.dumps({"version": BUILDER_VERSION, "seed": seed, "spec": MODEL_SPEC, "corpus": corpus(),
                       "special": SPECIAL_TOKENS, "chat": CHAT_TEMPLATE}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure_default_model(cache_dir: Path, seed: int = 0) -> Path:
    """``<cache_dir>/models/epiq-tiny-<hash>``, built once (in a temp folder renamed into place)."""
    models = Path(cache_dir).resolve() / "models"
    final = models / f"{DEFAULT_MODEL}-{cache_key(seed)}"
    if (final / "build_info.json").is_file():
        return final
    models.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=models))
    try:
        build_model(tmp, seed)
        tmp.chmod(0o755)  # mkdtemp made it private
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: keep theirs
            if not (final / "build_info.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_model(model: str, cache_dir: Path) -> str:
    """``llm.model`` -> what vLLM loads: the built epiq-tiny folder, or the value itself (path / hub id)."""
    return str(ensure_default_model(cache_dir)) if model == DEFAULT_MODEL else model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.model_builder", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="new (or empty) folder to build the model into")
    parser.add_argument("--seed", type=int, default=0, help="weight-initialisation seed")
    args = parser.parse_args(argv)
    info = build_model(args.out, args.seed)
    print(json.dumps({"out": str(args.out), **info}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
