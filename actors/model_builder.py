"""The project's small default model "epiq-tiny": a locally trained tokenizer and a LLaMA policy trained on CPU.

Owns: the built-in text-game corpus, training a byte-level BPE tokenizer on it (no downloads), the tiny
LLaMA config, training it on TextWorld coin_collector walkthroughs in the agent's plan layout
(``actors.policy_data`` makes the samples, ``actors.policy_train`` trains; a few minutes on one CPU thread, with
progress lines on stderr), building deterministically (same seed -> byte-identical ``model.safetensors``, its
sha256 in ``build_info.json``), the cache folder ``<cache_dir>/models/epiq-tiny-<hash>`` (built once,
atomically; the training games are cached under ``<cache_dir>/textworld``), and resolving ``llm.model``
("epiq-tiny" -> that folder; a packaged model name or a .gguf path -> ``actors.pretrained``'s built folder;
anything else passes through unchanged).

    python -m actors.model_builder --out /tmp/epiq-tiny [--seed 0] [--cache-dir .cache]   # build into a new folder
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common.caches import build_once, sha256_file

DEFAULT_MODEL = "epiq-tiny"
BUILDER_VERSION = "2"  # bump when the build procedure changes (spec, corpus, training and source changes already do)

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
# What the policy is trained on and for how long (all of it is in the cache key). A first build on a shared
# 2-core machine: 56 games in about 70 s (two processes), 300 steps in about 200 s (one thread): 4.5 minutes.
TRAIN_SPEC: dict[str, Any] = dict(games=48, heldout_games=8, steps=300, batch_size=64, lr=2e-3, eval_every=50)
BUILD_THREADS = 1  # torch threads inside the build: a fixed count keeps the float sums, hence the weights, identical
_SOURCES = ("policy_data.py", "policy_train.py", "prompting.py")  # code whose change changes the weights

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
# Whole commands as single tokens (with their leading space, as the plan layout writes them), and each command
# after the plan layout's ">>" marker as one more token: following a memory is then copying one marked token,
# which a tiny model learns in a few hundred steps (split into words, it had not learned it after 500).
COMMANDS = [f"go {d}" for d in DIRECTIONS] + ["take coin", "examine coin", "look", "inventory"]
COMMAND_TOKENS = [f" {c}" for c in COMMANDS] + [f" >> {c}" for c in [*COMMANDS, "end"]]
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
    lines += ["memory: none", "memory: go south ; >> go east ; take coin ; end", "memory: failed go west ; >> look",
              "room: -= Kitchen =- You've entered a kitchen. There is an unguarded exit to the north.",
              "actions: examine coin | go east | go west | inventory | look | take coin", ">",
              "You arrive in a normal kind of place. You find yourself in a bar. Well how about that, you are in "
              "the place we're calling the attic. You need an unblocked exit? You should try going east. You don't "
              "like doors? Why not try going west, that entranceway is unguarded. There is a coin on the floor."]
    return lines


# --------------------------------------------------------------------------- building

def _build_tokenizer(out: Path) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4096, min_frequency=1, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False) for t in COMMAND_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=IM_END, pad_token=PAD,
                                   additional_special_tokens=[EOS, IM_START], chat_template=CHAT_TEMPLATE,
                                   model_max_length=MODEL_SPEC["max_position_embeddings"])
    fast.save_pretrained(out)
    return fast


def _build_model(out: Path, tokenizer: Any, seed: int, cache_dir: Path, train: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from actors.policy_data import SEED_BASE, game_records
    from actors.policy_train import train_policy

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=ids[BOS], eos_token_id=ids[IM_END],
                         pad_token_id=ids[PAD], **MODEL_SPEC)
    config.dtype = "float32"
    started = time.monotonic()
    workers = min(2, os.cpu_count() or 1)
    games = game_records(cache_dir, train["games"] + train["heldout_games"], SEED_BASE, workers=workers)
    records, heldout = games[:train["games"]], games[train["games"]:]
    games_s = time.monotonic() - started
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(BUILD_THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):  # seed init and training without touching the caller's RNG
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config).to(torch.float32)
            stats = train_policy(model, tokenizer, records, heldout, steps=train["steps"], seed=seed,
                                 batch_size=train["batch_size"], lr=train["lr"], eval_every=train["eval_every"])
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the build prints its own progress lines; no tqdm bar on the terminal
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=ids[BOS], eos_token_id=[ids[IM_END], ids[EOS]], pad_token_id=ids[PAD]).save_pretrained(out)
    seeds = [r.seed for r in games]
    return {"training": {**train, "train_seeds": [min(seeds), max(seeds)], "levels": sorted({r.level for r in games}),
                         "games_seconds": round(games_s, 1), **stats}}


def build_model(out: Path, seed: int = 0, cache_dir: Path | None = None, **train: Any) -> dict[str, Any]:
    """Build epiq-tiny into ``out`` (created; must not hold files) and return its build info.

    ``cache_dir`` keeps the generated training games (a temporary folder when None); ``train`` overrides
    ``TRAIN_SPEC`` entries (tests build a reduced model with e.g. ``games=4, heldout_games=1, steps=3``)."""
    unknown = set(train) - set(TRAIN_SPEC)
    if unknown:
        raise ValueError(f"unknown training settings {sorted(unknown)}; valid: {sorted(TRAIN_SPEC)}")
    spec = {**TRAIN_SPEC, **train}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; pick a new folder for the model")
    started = time.monotonic()
    tokenizer = _build_tokenizer(out)
    with tempfile.TemporaryDirectory(prefix="epiq-games-") as tmp:
        trained = _build_model(out, tokenizer, seed, Path(cache_dir) if cache_dir else Path(tmp), spec)
    info = {"name": DEFAULT_MODEL, "builder_version": BUILDER_VERSION, "seed": seed, "vocab_size": len(tokenizer),
            "weights_sha256": sha256_file(out / "model.safetensors"),
            "tokenizer_sha256": sha256_file(out / "tokenizer.json"), **MODEL_SPEC, **trained,
            "build_seconds": round(time.monotonic() - started, 1)}
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"epiq-tiny build: done in {info['build_seconds']:.0f} s; held-out exact command "
          f"{trained['training']['heldout']} (step {trained['training']['best_step']})", file=sys.stderr, flush=True)
    return info


def cache_key(seed: int = 0) -> str:
    """Short hash naming the cache folder: builder version, seed, model and training spec, corpus, special tokens
    and the source of the modules that make the training data and train."""
    here = Path(__file__).resolve().parent
    sources = {name: hashlib.sha256((here / name).read_bytes()).hexdigest() for name in _SOURCES}
    text = json.dumps({"version": BUILDER_VERSION, "seed": seed, "spec": MODEL_SPEC, "train": TRAIN_SPEC,
                       "corpus": corpus(), "special": SPECIAL_TOKENS, "commands": COMMAND_TOKENS,
                       "chat": CHAT_TEMPLATE, "sources": sources}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure_default_model(cache_dir: Path, seed: int = 0) -> Path:
    """``<cache_dir>/models/epiq-tiny-<hash>``, built once (in a temp folder renamed into place)."""
    final = Path(cache_dir).resolve() / "models" / f"{DEFAULT_MODEL}-{cache_key(seed)}"
    if not (final / "build_info.json").is_file():
        print(f"epiq-tiny: building (training) the default model into {final} - a few minutes, once",
              file=sys.stderr, flush=True)
    return build_once(final, lambda tmp: build_model(tmp, seed, cache_dir=Path(cache_dir)))


def resolve_model(model: str, cache_dir: Path) -> str:
    """``llm.model`` -> what vLLM loads: the built epiq-tiny folder, a packaged or GGUF model's built folder
    (``actors.pretrained``), or the value itself (a local Hugging Face folder / hub id)."""
    if model == DEFAULT_MODEL:
        return str(ensure_default_model(cache_dir))
    from actors.pretrained import is_pretrained, resolve_pretrained  # imports this module: resolved lazily

    return resolve_pretrained(model, cache_dir) if is_pretrained(model) else model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.model_builder", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="new (or empty) folder to build the model into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weight initialisation and the sample order")
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep the generated training games here")
    for key, value in TRAIN_SPEC.items():  # reduced builds (tests): --steps 4 --games 3 ...
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value, help=f"training: {key}")
    args = parser.parse_args(argv)
    info = build_model(args.out, args.seed, args.cache_dir, **{k: getattr(args, k) for k in TRAIN_SPEC})
    print(json.dumps({"out": str(args.out), **info}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
