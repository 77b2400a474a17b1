"""``epiq bench adapter_capacity``: how many optimizer updates a LoRA adapter on the policy needs to learn the
quickstart's games from the best possible data.

The learner's own adapter (``learner.lora_rank``, ``lora_alpha``, ``target_modules`` from the config, AdamW,
gradient clip ``learner.grad_clip``) is trained on every walkthrough step of the config's games (the agent's
``plan`` prompt with no memory, target = the walkthrough's next command), full batch, one AdamW update per round:
supervised learning on wins, which is what the policy-gradient loss does with advantage 1 and ratio 1. After
each checkpoint in ``--updates`` it reports, at the config's sampling temperature, the **route probability**:
the chance that the policy samples every command of a game's walkthrough in a row (the product of its per-step
probabilities, averaged over games), and the mean per-step probability of the walkthrough's command. A game
can also be won off the walkthrough (detours), so the route probability is a floor on the success rate, not the
success rate. No Ray, no engine: transformers and peft on CPU, one thread.

    python -m benchmarks.adapter_capacity --lrs 3e-3,1e-2 --out runs/bench/adapter_capacity.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any


def walkthrough_samples(cfg: Any, tokenizer: Any, cache_dir: str) -> list[tuple[int, list[int], int]]:
    """(game index, prompt token ids, the walkthrough command's token id) for every step of every task."""
    from actors.policy_data import play_walkthrough, render

    out = []
    for g, seed in enumerate(cfg.env.task_seeds):
        record = play_walkthrough(cfg.env.level, seed, cache_dir)
        for step in range(len(record.walkthrough)):
            prompt, target = render(record, step, "none", record, random.Random(0), permute=False)
            ids = tokenizer.encode(target)
            if len(ids) < 1:
                raise ValueError(f"game {seed} step {step}: empty target {target!r}")
            out.append((g, tokenizer.encode(prompt), ids[0]))  # whole-command tokens: the first one decides
    return out


def route_probability(model: Any, samples: list[tuple[int, list[int], int]], temperature: float) -> tuple[float, float]:
    """(mean over games of the product of per-step target probabilities, mean per-step target probability)."""
    import torch

    model.eval()
    route: dict[int, float] = {}
    steps = []
    with torch.no_grad():
        for g, prompt, target in samples:
            logits = model(input_ids=torch.tensor([prompt])).logits[0, -1] / max(temperature, 1e-6)
            p = float(torch.softmax(logits, -1)[target])
            route[g] = route.get(g, 1.0) * p
            steps.append(p)
    return sum(route.values()) / len(route), sum(steps) / len(steps)


def train_curve(cfg: Any, model_path: str, samples: list[tuple[int, list[int], int]], lr: float,
                checkpoints: list[int], temperature: float, seed: int) -> list[dict[str, float]]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    lc = cfg.learner
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=lc.lora_rank, lora_alpha=lc.lora_alpha,
                                            target_modules=list(lc.target_modules), lora_dropout=0.0, bias="none",
                                            task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    width = max(len(p) for _, p, _ in samples) + 1
    ids = torch.zeros(len(samples), width, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, (_, prompt, target) in enumerate(samples):
        ids[i, :len(prompt)] = torch.tensor(prompt)
        ids[i, len(prompt)] = target
        attn[i, :len(prompt) + 1] = 1
    rows = torch.arange(len(samples))
    pos = torch.tensor([len(p) - 1 for _, p, _ in samples])  # the logits there predict the command
    targets = torch.tensor([t for _, _, t in samples])
    curve, done = [], 0
    for k in sorted(set([0, *checkpoints])):
        for _ in range(k - done):
            model.train()
            opt.zero_grad(set_to_none=True)
            logits = model(input_ids=ids, attention_mask=attn).logits[rows, pos]
            loss = -torch.log_softmax(logits.float(), -1)[rows, targets].mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, lc.grad_clip)
            opt.step()
        done = k
        route, step = route_probability(model, samples, temperature)
        curve.append({"updates": k, "route_probability": round(route, 4), "step_probability": round(step, 4)})
        print(f"lr {lr:g}: {k:3d} updates  route probability {100 * route:5.1f}%  per-step {100 * step:5.1f}%",
              file=sys.stderr, flush=True)
    return curve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="epiq bench adapter_capacity", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--lrs", default="3e-3,1e-2", help="AdamW learning rates to compare")
    p.add_argument("--updates", default="5,10,20,40,80", help="checkpoints (cumulative AdamW updates)")
    p.add_argument("--seed", type=int, default=0, help="seed of the adapter's initialisation")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--out", type=Path, default=Path("runs/bench/adapter_capacity.json"))
    args = p.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from actors.model_builder import resolve_model
    from cluster.config import load

    cfg = load(args.config, args.set)
    if cfg.env.name != "textworld" or not cfg.env.task_seeds:
        raise SystemExit("adapter_capacity needs a TextWorld config with env.task_seeds (the games' walkthroughs)")
    torch.set_num_threads(1)
    started = time.monotonic()
    model_path = resolve_model(cfg.llm.model, Path(cfg.run.cache_dir))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    samples = walkthrough_samples(cfg, tokenizer, cfg.run.cache_dir)
    checkpoints = [int(x) for x in args.updates.split(",") if x]
    curves = {lr: train_curve(cfg, model_path, samples, float(lr), checkpoints, cfg.llm.temperature, args.seed)
              for lr in args.lrs.split(",")}
    out = {"command": "python -m benchmarks.adapter_capacity " + " ".join(argv if argv is not None else sys.argv[1:]),
           "config": args.config, "model": cfg.llm.model, "games": len(cfg.env.task_seeds), "steps": len(samples),
           "temperature": cfg.llm.temperature, "lora_rank": cfg.learner.lora_rank,
           "lora_alpha": cfg.learner.lora_alpha, "curves": curves, "seconds": round(time.monotonic() - started, 1),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()}}
    print("\n| updates | " + " | ".join(f"lr {lr}: route / per-step" for lr in curves) + " |")
    print("|---:|" + "---:|" * len(curves))
    for i, k in enumerate(curves[next(iter(curves))]):
        cells = [f"{100 * c[i]['route_probability']:.1f}% / {100 * c[i]['step_probability']:.1f}%" for c in curves.values()]
        print(f"| {k['updates']} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
