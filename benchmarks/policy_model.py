"""``epiq bench policy_model``: does epiq-tiny play coin_collector, and does it follow a retrieved experience?

On unseen games (level 105, seeds 1000.. by default: the quickstart's; the model trains on seeds >= 500000),
each game is played to the end with the trained model (transformers on CPU, one thread; the agent's exact
prompt ``build_prompt("plan")`` and ``parse_action``) in four conditions:

- ``none``: no memory (zero-shot);
- ``correct``: the game's walkthrough as a SUCCESS experience (what memory holds after a win on that game);
- ``wrong``: another game's success script (a retrieval mistake);
- ``failed``: a failed attempt at the same game (the walkthrough's first command, then random moves);

at temperature 0 (greedy) and at each ``--temperatures`` value. Reported: success rate per condition and
temperature, plus per-step agreement along the walkthrough (greedy command == walkthrough command, with the
true states, per condition) and, for ``wrong``, how often the greedy command is the wrong script's command.
A uniformly random admissible policy gives the floor. Prints a table and writes JSON.

    python -m benchmarks.policy_model --cache-dir .cache --games 50 --out runs/bench/policy_model.json
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

CONDITIONS = ("none", "correct", "wrong", "failed")


def _memory(condition: str, game: dict[str, Any], other: dict[str, Any], rng: random.Random) -> list[str]:
    from actors.prompting import experience_text

    if condition == "correct":
        return [experience_text(True, game["walkthrough"], game["goal"], "")]
    if condition == "wrong":
        return [experience_text(True, other["walkthrough"], other["goal"], "")]
    if condition == "failed":
        moves = [game["walkthrough"][0]] + [f"go {rng.choice(('north', 'south', 'east', 'west'))}" for _ in range(5)]
        return [experience_text(False, moves, game["goal"], "You can't go that way.")]
    return []


def play(env: Any, task: Any, act: Any, experiences: list[str]) -> tuple[bool, int]:
    """One episode: (won, steps)."""
    from actors.prompting import build_prompt, parse_action

    obs = env.reset(task)
    text, admissible = obs.text, obs.admissible_actions
    for k in range(env.max_steps):
        prompt = build_prompt("plan", obs.goal, text, admissible, experiences, [], lambda s: len(s) // 4 + 1,
                              10_000, step=k)
        result = env.step(parse_action(act(prompt, admissible), admissible))
        text, admissible = result.observation, result.admissible_actions
        if result.done:
            return result.won, k + 1
    return False, env.max_steps


def agreement(env: Any, task: Any, game: dict[str, Any], act: Any, experiences: list[str],
              wrong_script: list[str] | None = None) -> tuple[int, int, int]:
    """Along the walkthrough's true states: (steps, greedy == walkthrough, greedy == the wrong script's command)."""
    from actors.prompting import build_prompt, parse_action

    obs = env.reset(task)
    text, admissible, same, misled = obs.text, obs.admissible_actions, 0, 0
    for k, true in enumerate(game["walkthrough"]):
        prompt = build_prompt("plan", obs.goal, text, admissible, experiences, [], lambda s: len(s) // 4 + 1,
                              10_000, step=k)
        action = parse_action(act(prompt, admissible), admissible)
        same += action == true
        if wrong_script is not None and k < len(wrong_script) and wrong_script[k] != true:
            misled += action == wrong_script[k]
        result = env.step(true)
        text, admissible = result.observation, result.admissible_actions
    return len(game["walkthrough"]), same, misled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="epiq bench policy_model", description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    parser.add_argument("--model", default="epiq-tiny", help="'epiq-tiny' (built into the cache if needed) or a folder")
    parser.add_argument("--games", type=int, default=50)
    parser.add_argument("--level", type=int, default=105)
    parser.add_argument("--seed-start", type=int, default=1000)
    parser.add_argument("--max-steps", type=int, default=12, help="env.max_steps of each episode")
    parser.add_argument("--temperatures", default="0.5", help="sampling temperatures besides greedy (comma list)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/policy_model.json"))
    args = parser.parse_args(argv)
    if args.seed_start + args.games > 500_000:
        parser.error("evaluation seeds must stay below 500000 (the training seeds)")

    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from actors.envs.textworld_env import TextWorldEnv, task_set
    from actors.model_builder import resolve_model
    from actors.policy_train import generate_command
    from cluster.config import EnvConfig

    torch.set_num_threads(1)
    model_path = resolve_model(args.model, args.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = LlamaForCausalLM.from_pretrained(model_path).eval()
    cfg = EnvConfig(challenge="tw-coin_collector", level=args.level, task_seed=args.seed_start, num_tasks=args.games,
                    max_steps=args.max_steps)
    env = TextWorldEnv(cfg, args.cache_dir)
    tasks = task_set(cfg)
    games = []
    started = time.monotonic()
    for task in tasks:
        obs = env.reset(task)
        games.append({"seed": task.seed, "goal": obs.goal, "walkthrough": list(obs.info["walkthrough"])})
    print(f"{len(games)} games ready ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)

    def others(i: int) -> dict[str, Any]:  # the next game whose script differs: a wrong memory
        for j in range(1, len(games)):
            g = games[(i + j) % len(games)]
            if g["walkthrough"] != games[i]["walkthrough"]:
                return g
        return games[(i + 1) % len(games)]

    temps = [0.0] + [float(t) for t in args.temperatures.split(",") if t.strip()]
    rows: list[dict[str, Any]] = []
    for temp in temps + ["random"]:
        for condition in (CONDITIONS if temp != "random" else ("none",)):
            won = steps = 0
            for i, (task, game) in enumerate(zip(tasks, games)):
                rng = random.Random(f"{game['seed']}:{condition}:{temp}")
                gen = torch.Generator().manual_seed(rng.randrange(2**31))
                if temp == "random":
                    act = lambda prompt, admissible: rng.choice(admissible)  # noqa: E731
                else:
                    act = lambda prompt, admissible, t=temp: generate_command(model, tokenizer, prompt, t, gen)  # noqa: E731
                w, n = play(env, task, act, _memory(condition, game, others(i), rng))
                won += w
                steps += n
            rows.append({"temperature": temp, "memory": condition, "success": round(won / len(games), 3),
                         "mean_steps": round(steps / len(games), 2)})
            print(f"  T={temp} {condition:8s} success {won / len(games):.2f}", file=sys.stderr, flush=True)

    greedy = lambda prompt, admissible: generate_command(model, tokenizer, prompt, 0.0)  # noqa: E731
    agree: dict[str, Any] = {}
    for condition in CONDITIONS:
        total = same = misled = 0
        for i, (task, game) in enumerate(zip(tasks, games)):
            other = others(i)
            rng = random.Random(f"{game['seed']}:{condition}:agree")
            n, s, m = agreement(env, task, game, greedy, _memory(condition, game, other, rng),
                                other["walkthrough"] if condition == "wrong" else None)
            total, same, misled = total + n, same + s, misled + m
        agree[condition] = {"steps": total, "agreement": round(same / total, 3)}
        if condition == "wrong":
            agree[condition]["followed_wrong"] = round(misled / total, 3)
    env.close()

    info = json.loads((Path(model_path) / "build_info.json").read_text())
    result = {"command": "python -m benchmarks.policy_model " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "model": {"path": model_path, "weights_sha256": info.get("weights_sha256"), "seed": info.get("seed")},
              "games": {"challenge": "tw-coin_collector", "level": args.level, "seeds": [tasks[0].seed, tasks[-1].seed],
                        "max_steps": args.max_steps,
                        "mean_walkthrough": round(sum(len(g["walkthrough"]) for g in games) / len(games), 2)},
              "episodes": rows, "per_step": agree, "seconds": round(time.monotonic() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\nepiq-tiny on tw-coin_collector level {args.level}, seeds {tasks[0].seed}-{tasks[-1].seed}, "
          f"max_steps {args.max_steps}: success rate")
    print(f"{'temperature':>12} " + " ".join(f"{c:>8}" for c in CONDITIONS))
    for temp in temps:
        cells = {r["memory"]: r["success"] for r in rows if r["temperature"] == temp}
        print(f"{temp:>12} " + " ".join(f"{cells[c]:>8.2f}" for c in CONDITIONS))
    print(f"{'random':>12} {rows[-1]['success']:>8.2f}")
    print("per-step agreement with the walkthrough (greedy, true states): "
          + ", ".join(f"{c} {v['agreement']:.2f}" for c, v in agree.items())
          + f"; followed the wrong script: {agree['wrong']['followed_wrong']:.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
