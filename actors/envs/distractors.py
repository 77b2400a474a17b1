"""Task sets with real distractors: groups of TextWorld games whose intents are nearly identical, solutions not.

Owns: the construction of the quickstart's task set. From a range of candidate seeds it generates the games
(TextWorld's own generator, cached like every game), embeds each game's ``intent`` (the text retrieval sees)
with the memory's embedder, and forms groups greedily: the candidate with the most neighbours above
``min_sim`` seeds a group, which takes its most similar neighbours whose walkthroughs differ from every
member's. Inside a group, similarity cannot tell whose experience fits, so similarity-only retrieval (rag)
injects a wrong walkthrough whenever another member's memory outranks the task's own — the case that
value-aware retrieval (memrl) is for. The chosen seeds go into the config (``env.task_seeds``).

    python -m actors.envs.distractors --level 105 --seeds 1000-1299 --groups 5 --size 4 --out runs/distractors.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from actors.envs.textworld_env import TextWorldEnv, task_set
from actors.config import EnvConfig


def candidates(challenge: str, level: int, seeds: list[int], cache_dir: str | Path, progress: bool = True) -> list[dict]:
    """Each seed's intent and walkthrough (games generated into the cache on first use)."""
    out = []
    cfg = EnvConfig(challenge=challenge, level=level, max_steps=50)
    env = TextWorldEnv(cfg, cache_dir)
    for i, seed in enumerate(seeds):
        task = task_set(EnvConfig(challenge=challenge, level=level, task_seed=seed, num_tasks=1))[0]
        obs = env.reset(task)
        out.append({"seed": seed, "intent": obs.intent, "walkthrough": list(obs.info["walkthrough"])})
        if progress:
            print(f"\rcandidate games: {i + 1}/{len(seeds)}", end="", file=sys.stderr, flush=True)
    env.close()
    if progress:
        print(file=sys.stderr)
    return out


def form_groups(cands: list[dict], vectors: np.ndarray, groups: int, size: int, min_sim: float) -> list[dict]:
    """Greedy groups of ``size`` games, pairwise cosine >= ``min_sim``, pairwise different walkthroughs."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sim = v @ v.T
    np.fill_diagonal(sim, -1.0)
    free = set(range(len(cands)))
    chosen: list[dict] = []
    while len(chosen) < groups:
        best: list[int] | None = None
        order = sorted(free, key=lambda i: -int((sim[i, list(free)] >= min_sim).sum()))
        for seed_i in order:
            members = [seed_i]
            for j in sorted(free - {seed_i}, key=lambda j: -sim[seed_i, j]):
                if len(members) == size:
                    break
                if all(sim[m, j] >= min_sim and cands[m]["walkthrough"] != cands[j]["walkthrough"] for m in members):
                    members.append(j)
            if len(members) == size:
                best = members
                break
        if best is None:
            raise ValueError(f"only {len(chosen)} groups of {size} with cosine >= {min_sim}; lower --min-sim or add seeds")
        free -= set(best)
        pair = [float(sim[a, b]) for a in best for b in best if a < b]
        outside = max(float(sim[a, b]) for a in best for b in free) if free else float("nan")
        chosen.append({"seeds": [cands[i]["seed"] for i in best], "min_sim": min(pair), "mean_sim": float(np.mean(pair)),
                       "max_sim_outside": outside, "walkthroughs": [cands[i]["walkthrough"] for i in best]})
    return chosen


def _seed_range(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m actors.envs.distractors", description=__doc__.splitlines()[0])
    p.add_argument("--challenge", default="tw-coin_collector")
    p.add_argument("--level", type=int, default=105)
    p.add_argument("--seeds", default="1000-1299", help="candidate seed range LO-HI (inclusive)")
    p.add_argument("--groups", type=int, default=5)
    p.add_argument("--size", type=int, default=4)
    p.add_argument("--min-sim", type=float, default=0.9, help="minimum pairwise intent cosine inside a group")
    p.add_argument("--embedder", default="all-MiniLM-L6-v2")
    p.add_argument("--cache-dir", default=".cache")
    p.add_argument("--out", type=Path, default=None, help="write the groups as JSON here")
    args = p.parse_args(argv)
    from common.caches import redirect_caches
    from memory_server.embedder import load_embedder

    redirect_caches(Path(args.cache_dir))
    cands = candidates(args.challenge, args.level, _seed_range(args.seeds), args.cache_dir)
    vectors = load_embedder(args.embedder).encode([c["intent"] for c in cands])
    chosen = form_groups(cands, vectors, args.groups, args.size, args.min_sim)
    result: dict[str, Any] = {"challenge": args.challenge, "level": args.level, "candidates": args.seeds,
                              "embedder": args.embedder, "min_sim": args.min_sim, "groups": chosen,
                              "task_seeds": [s for g in chosen for s in g["seeds"]]}
    for g in chosen:
        print(f"group {g['seeds']}: intent cosine {g['min_sim']:.3f}-{g['mean_sim']:.3f} inside, "
              f"<= {g['max_sim_outside']:.3f} to the rest; first moves {[w[0] for w in g['walkthroughs']]}")
    print("env.task_seeds:", json.dumps(result["task_seeds"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
