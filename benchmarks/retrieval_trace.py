"""Retrieval traces of a mode comparison: what each memory mode injected, and whether it found the right experience.

Reads a run folder made with ``run.modes`` (its ``<mode>/episodes.jsonl``; every memory is written by an episode,
so a memory id maps back to its task and outcome) and prints, per memory mode (epochs after the first):
- what the shown experience was: the task's own success / failure, another task's success / failure, or
  nothing — with the success rate of the episodes that got it;
- once a task has a success memory from an earlier epoch, how often that success was the one retrieved, by the
  number of the task's own failures competing with it (they share its intent exactly, so similarity ties),
  and when it was not, whether other tasks' or the task's own failures had been shown it before (a lowered Q);
- for every mode (``none`` included, as the baseline): episodes of tasks already solved in an earlier epoch
  against tasks never solved before, and how many of each were won: where memory can help and where it cannot.

    python -m benchmarks.retrieval_trace runs/bench/learning-20261123-113822 [--modes none,rag,memrl]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def trace(episodes: list[dict]) -> dict:
    mem = {e["written_memory_id"]: e for e in episodes if e.get("written_memory_id")}
    kinds, kind_wins = Counter(), Counter()
    had, picked, won = Counter(), Counter(), Counter()
    by_task: dict[tuple[int, str], list[dict]] = {}
    for e in episodes:
        by_task.setdefault((e["seed"], e["task_id"]), []).append(e)
    for e in episodes:
        if e["epoch"] == 0:
            continue
        shown = mem.get(e["retrieved_ids"][0]) if e["retrieved_ids"] else None
        if shown is None:
            kind = "nothing" if not e["retrieved_ids"] else "unknown"
        else:
            kind = ("own " if shown["task_id"] == e["task_id"] else "other ") + ("success" if shown["won"] else "failure")
        kinds[kind] += 1
        kind_wins[kind] += e["won"]
        prior = [p for p in by_task[(e["seed"], e["task_id"])] if p["epoch"] < e["epoch"]]
        if any(p["won"] for p in prior):
            n_fail = sum(not p["won"] for p in prior)
            had[n_fail] += 1
            picked[n_fail] += bool(shown and shown["won"] and shown["task_id"] == e["task_id"])
            won[n_fail] += e["won"]
    return {"shown": {k: {"episodes": v, "success": kind_wins[k] / v} for k, v in sorted(kinds.items())},
            "own_success_available": {n: {"episodes": had[n], "picked_own_success": picked[n], "won": won[n]}
                                      for n in sorted(had)}}


def missed_own_success(episodes: list[dict]) -> dict[str, int]:
    """Episodes of epochs 2+ whose task had a success memory from an earlier epoch (same seed) and were shown
    none, by what those memories had been through before the episode (file order is finishing order, so an
    earlier line's reward had been sent): ``other_tasks_failed_with_it`` — every failed episode they had been
    injected into was another task's (the utility another task's failures lowered, e.g. below the Q floor);
    ``own_task_failed_with_it`` — the task's own episodes failed with one; ``never_failed_in_use`` — neither
    (crowded out of Phase A's top k1, or ranked below another candidate)."""
    mem = {e["written_memory_id"]: e for e in episodes if e.get("written_memory_id")}
    failed_uses: dict[str, list[tuple[int, str]]] = {}  # memory id -> (line, task) of failed episodes it was shown to
    out = {"other_tasks_failed_with_it": 0, "own_task_failed_with_it": 0, "never_failed_in_use": 0}
    for line, e in enumerate(episodes):
        if not e["won"]:
            for m in e["retrieved_ids"]:
                failed_uses.setdefault(m, []).append((line, e["task_id"]))
    for line, e in enumerate(episodes):
        if e["epoch"] == 0:
            continue
        own = [m for m, w in mem.items() if w["won"] and w["seed"] == e["seed"] and w["task_id"] == e["task_id"]
               and w["epoch"] < e["epoch"]]
        if not own or set(own) & set(e["retrieved_ids"]):
            continue
        before = [task for m in own for x, task in failed_uses.get(m, []) if x < line]
        key = ("never_failed_in_use" if not before else
               "own_task_failed_with_it" if e["task_id"] in before else "other_tasks_failed_with_it")
        out[key] += 1
    return out


def solved_before(episodes: list[dict]) -> dict[str, dict[str, int]]:
    """Episodes of epochs 2+ split by whether their task (same seed) was won in an earlier epoch, with wins."""
    won_in: dict[tuple[int, str], set[int]] = {}
    for e in episodes:
        if e["won"]:
            won_in.setdefault((e["seed"], e["task_id"]), set()).add(e["epoch"])
    out = {"solved_before": {"episodes": 0, "won": 0}, "never_solved_before": {"episodes": 0, "won": 0}}
    for e in episodes:
        if e["epoch"] == 0:
            continue
        key = "solved_before" if any(x < e["epoch"] for x in won_in.get((e["seed"], e["task_id"]), ())) \
            else "never_solved_before"
        out[key]["episodes"] += 1
        out[key]["won"] += int(e["won"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.retrieval_trace", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--modes", default="none,rag,memrl,lora,memory+lora")
    args = p.parse_args(argv)
    out = {}
    for mode in args.modes.split(","):
        path = args.run_dir / mode / "episodes.jsonl"
        if not path.is_file():
            continue
        episodes = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        split = solved_before(episodes)
        print(f"\n{mode}: epochs 2+ -> won / episodes")
        for k, v in split.items():
            rate = f"{v['won'] / v['episodes']:.0%}" if v["episodes"] else "-"
            print(f"  task {k.replace('_', ' '):20s} {v['won']:4d} / {v['episodes']:4d}  {rate}")
        if not any(e["retrieved_ids"] for e in episodes):  # a mode without memory: only the split above
            out[mode] = {"epochs_2plus": split}
            continue
        out[mode] = t = trace(episodes) | {"epochs_2plus": split, "missed_own_success": missed_own_success(episodes)}
        print(f"{mode}: experience shown (epochs 2+) -> episodes, success")
        for k, v in t["shown"].items():
            print(f"  {k:16s} {v['episodes']:4d}  {v['success']:.0%}")
        print(f"{mode}: tasks that already had a success memory -> own success retrieved / episodes (won)")
        for n, v in t["own_success_available"].items():
            print(f"  {n} own failures competing: {v['picked_own_success']}/{v['episodes']} ({v['won']} won)")
        print(f"{mode}: own success not shown, after -> episodes")
        for k, n in t["missed_own_success"].items():
            print(f"  {k.replace('_', ' '):28s} {n:4d}")
    (args.run_dir / "retrieval_trace.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
