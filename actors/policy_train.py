"""Training epiq-tiny's policy on CPU: next-command loss on plan prompts, a held-out check, and command generation.

Owns: batching rendered samples (``policy_data.render``) into token tensors with the loss on the target only,
the training loop (AdamW, warm-up then cosine decay, seeded sample order, one CPU thread: same seed -> same
weights), the held-out check (exact greedy command per memory mode, on games never trained on) that picks the
checkpoint the build keeps, and ``generate_command`` (greedy or sampled, up to a newline, like the agent's
``stop=["\\n"]``) for benchmarks.

    stats = train_policy(model, tokenizer, train_records, heldout_records, steps=300, seed=0)
"""

from __future__ import annotations

import copy
import math
import random
import sys
import time
from typing import Any

from actors.policy_data import GameRecord, pick_mode, render

HELDOUT_MODES = ("correct", "none", "wrong")


def encode(tokenizer: Any, samples: list[tuple[str, str]]) -> tuple[Any, Any]:
    """(input_ids [B, T] right-padded, target mask [B, T] marking the positions whose NEXT token is a target)."""
    import torch

    rows, masks = [], []
    for prompt, target in samples:
        p = tokenizer.encode(prompt)  # tokenised apart, as the agent sends the prompt and the model continues it
        t = tokenizer.encode(target)
        rows.append(p + t)
        masks.append([0] * (len(p) - 1) + [1] * len(t) + [0])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([m + [0] * (width - len(m)) for m in masks], dtype=torch.bool)
    return ids, mask


def target_loss(model: Any, ids: Any, mask: Any) -> tuple[Any, Any]:
    """Cross-entropy on target tokens only (logits computed only there) and per-row 'all target tokens argmax'."""
    import torch
    import torch.nn.functional as F

    hidden = model.model(input_ids=ids).last_hidden_state  # right padding: causal attention never sees the pads
    logits = model.lm_head(hidden[:, :-1][mask[:, :-1]])
    labels = ids[:, 1:][mask[:, :-1]]
    loss = F.cross_entropy(logits, labels)
    hit = torch.zeros(mask.shape, dtype=torch.bool)
    hit[:, :-1][mask[:, :-1]] = logits.argmax(-1) == labels
    row_ok = ((hit | ~mask)[:, :-1]).all(dim=1)
    return loss, row_ok


def batch(records: list[GameRecord], size: int, rng: random.Random) -> list[tuple[str, str]]:
    samples = []
    for _ in range(size):
        record = rng.choice(records)
        other = rng.choice(records)
        while other is record and len(records) > 1:
            other = rng.choice(records)
        samples.append(render(record, rng.randrange(len(record.walkthrough)), pick_mode(rng), other, rng))
    return samples


def heldout_set(records: list[GameRecord], seed: int = 12345) -> dict[str, list[tuple[str, str]]]:
    """Every step of every held-out game in each memory mode, with fixed direction relabellings."""
    rng = random.Random(seed)
    out: dict[str, list[tuple[str, str]]] = {m: [] for m in HELDOUT_MODES}
    for i, record in enumerate(records):
        other = records[(i + 1) % len(records)]
        for step in range(len(record.walkthrough)):
            for mode in HELDOUT_MODES:
                out[mode].append(render(record, step, mode, other, rng))
    return out


def heldout_accuracy(model: Any, tokenizer: Any, held: dict[str, list[tuple[str, str]]]) -> dict[str, float]:
    """Share of held-out steps whose greedy command is the walkthrough's, per memory mode."""
    import torch

    model.eval()
    acc = {}
    with torch.no_grad():
        for mode, samples in held.items():
            ok = 0
            for i in range(0, len(samples), 128):
                ids, mask = encode(tokenizer, samples[i:i + 128])
                ok += int(target_loss(model, ids, mask)[1].sum())
            acc[mode] = ok / max(1, len(samples))
    model.train()
    return acc


def train_policy(model: Any, tokenizer: Any, records: list[GameRecord], heldout: list[GameRecord], steps: int,
                 seed: int, batch_size: int = 64, lr: float = 2e-3, warmup: int = 30, eval_every: int = 100,
                 log: Any = None) -> dict[str, Any]:
    """Train in place; keep the weights of the last best held-out check (correct-memory accuracy)."""
    import torch

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    held = heldout_set(heldout) if heldout else {}
    best: tuple[float, int, dict[str, float], Any] = (-1.0, 0, {}, None)
    history, started, running = [], time.monotonic(), 0.0
    model.train()
    for step in range(1, steps + 1):
        ids, mask = encode(tokenizer, batch(records, batch_size, rng))
        loss, _ = target_loss(model, ids, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running = loss.item() if step == 1 else 0.95 * running + 0.05 * loss.item()
        if held and (step % eval_every == 0 or step == steps):
            acc = heldout_accuracy(model, tokenizer, held)
            score = acc["correct"]  # the zero-shot share of a few held-out games is too noisy to choose by
            if score >= best[0]:  # ties: the later, longer-trained weights
                best = (score, step, acc, copy.deepcopy(model.state_dict()))
            history.append({"step": step, "loss": round(running, 4), **{k: round(v, 3) for k, v in acc.items()}})
            log(f"epiq-tiny build: step {step}/{steps} loss {running:.3f} held-out exact command: "
                + " ".join(f"{k} {v:.2f}" for k, v in acc.items()) + f" ({time.monotonic() - started:.0f} s)")
        elif step % max(1, eval_every // 2) == 0:
            log(f"epiq-tiny build: step {step}/{steps} loss {running:.3f} ({time.monotonic() - started:.0f} s)")
    if best[3] is not None:
        model.load_state_dict(best[3])
    model.eval()
    return {"steps": steps, "best_step": best[1], "heldout": {k: round(v, 3) for k, v in best[2].items()},
            "final_loss": round(running, 4), "history": history, "train_seconds": round(time.monotonic() - started, 1)}


def generate_command(model: Any, tokenizer: Any, prompt: str, temperature: float = 0.0, generator: Any = None,
                     max_new_tokens: int = 16) -> str:
    """The model's continuation of ``prompt`` up to a newline (greedy at temperature 0, else sampled)."""
    import torch

    ids = tokenizer.encode(prompt)
    out: list[int] = []
    past = None
    with torch.no_grad():
        x = torch.tensor([ids], dtype=torch.long)
        for _ in range(max_new_tokens):
            res = model(input_ids=x, past_key_values=past, use_cache=True)
            past, logits = res.past_key_values, res.logits[0, -1].float()
            if temperature > 0:
                tok = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator))
            else:
                tok = int(logits.argmax())
            out.append(tok)
            if tok == tokenizer.eos_token_id or "\n" in tokenizer.decode(out):
                break
            x = torch.tensor([[tok]], dtype=torch.long)
    return tokenizer.decode(out, skip_special_tokens=True).split("\n")[0]
