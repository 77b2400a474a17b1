"""Chaos benchmark: a live run with memory (two shards) and the LoRA learner, into which it SIGKILLs a rollout actor,
a memory shard, the learner and the Redis server (restarted on its append-only file), then checks from Redis and
the learner's own records that nothing accepted was lost or doubled.

The run is the real job (``cluster.job.run_job`` inside ``LocalServices``: local Ray, valkey with AOF fsync on
every write, the vLLM pool, rollout actors, shards, the supervised learner) on the quickstart's games. A fixed
schedule names what is killed after how many recorded episodes; ``--seed`` draws the exact points within each
window. Checks, after the run:

1. the run completed: every (epoch, task, sample) has exactly one recorded result;
2. every memory's visits equal the recorded episodes whose reward reached the stream with it injected
   (``Trajectory.rewarded``), and its Q equals a replay of its updates in the audit stream;
3. every trajectory the rollouts put on the learner's stream was trained at most once, and trained + dropped as
   stale accounts for all of them;
4. no stream holds an acknowledged entry beyond the trim policy (entries <= pending + undelivered + 1).

    python -m benchmarks.chaos --out runs/bench/chaos.json          # epiq bench chaos
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

# what is killed, and the window of recorded episodes in which it happens (the point is drawn with --seed)
SCHEDULE = [("rollout", (8, 16)), ("shard", (20, 28)), ("learner", (32, 40)), ("redis", (44, 52))]
ACTOR_TITLES = {"rollout": "ray::RolloutWorker", "shard": "ray::MemoryShard", "learner": "ray::Learner"}


def _recorded(run_dir: Path) -> int:
    path = run_dir / "episodes.jsonl"
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def _actor_pid(kind: str) -> int | None:
    """The PID of a live actor process of ``kind`` (Ray titles its worker processes ``ray::<Class>...``)."""
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].startswith(ACTOR_TITLES[kind]):
            return int(p.info["pid"])
    return None


def _chaos(run_dir: Path, services: Any, points: list[tuple[str, int]], done: threading.Event,
           log: list[dict]) -> None:
    """Kill each target once the run has recorded its number of episodes."""
    for kind, at in points:
        while _recorded(run_dir) < at:
            if done.wait(0.2):
                return
        entry: dict[str, Any] = {"kill": kind, "after_episodes": _recorded(run_dir), "time": time.time()}
        if kind == "redis":
            services.redis.kill()
            time.sleep(1.0)  # clients see the server gone
            services.redis.start(timeout=60)  # same port and password; the AOF brings back every acknowledged write
            entry["restarted"] = True
        else:
            pid = _actor_pid(kind)
            entry["pid"] = pid
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        log.append(entry)
        print(f"chaos: killed {kind} after {entry['after_episodes']} episodes", file=sys.stderr, flush=True)


def check(run_dir: Path, cfg: Any, redis_url: str) -> dict[str, Any]:
    """The four checks, from the run folder, Redis and the learner's commit log."""
    import redis

    from cluster.metrics import read_jsonl
    from learner.buffer import TrajectoryBuffer
    from memory_server import keys
    from memory_server.store import MemoryStore

    client = redis.Redis.from_url(redis_url)
    episodes = read_jsonl(run_dir / "episodes.jsonl")
    out: dict[str, Any] = {}
    # 1. completion
    slots = Counter((e["seed"], e["epoch"], e["task_id"], e.get("sample", 0)) for e in episodes)
    expected = len(cfg.rollout.seeds) * cfg.rollout.epochs * len(cfg.env.task_seeds) * cfg.rollout.group_size
    out["completed"] = {"ok": len(slots) == expected and max(slots.values()) == 1, "recorded": len(slots),
                        "expected": expected, "errors": sum(1 for e in episodes if e["error"])}
    # 2. memory accounting
    ns = f"{cfg.memory.namespace}-s{cfg.rollout.seeds[0]}"
    store = MemoryStore(client, ns, cfg.memory.shards)
    ids = [i for s in range(cfg.memory.shards) for i in store.shard_ids(s)]
    injected = Counter(m for e in episodes if e.get("rewarded") for m in e["retrieved_ids"])
    recs = {r.id: r for r in store.get(ids) if r is not None}
    visits_bad = [m for m, r in recs.items() if r.visits != injected.get(m, 0)]
    q_bad = []  # replay: each update's Q recomputed from the previous one, and the final Q against the record
    prev: dict[str, float] = {}
    for a in store.audit():
        if a["op"] == "add":
            prev[a["id"]] = float(a["q"])
        elif a["op"] == "update":
            want = prev.get(a["id"], 0.0) + cfg.memory.alpha * (a["reward"] - prev.get(a["id"], 0.0))
            if abs(want - a["q"]) > 1e-9:
                q_bad.append(a["id"])
            prev[a["id"]] = a["q"]
    q_bad += [m for m, r in recs.items() if abs(r.q - prev.get(m, r.q)) > 1e-9]
    out["memory"] = {"ok": not visits_bad and not q_bad, "memories": len(recs),
                     "rewarded_episodes": sum(1 for e in episodes if e.get("rewarded")),
                     "visits_mismatch": visits_bad[:10], "q_mismatch": sorted(set(q_bad))[:10]}
    # 3. learner exactly-once
    buf = TrajectoryBuffer(redis_url, ns)
    trained = [ep for c in buf.commit_log() for ep in c["episodes"]]
    put = {e["episode_id"] for e in episodes if e["error"] is None}
    committed = buf.committed()
    out["learner"] = {"ok": len(trained) == len(set(trained)) and set(trained) <= put
                      and len(set(trained)) + committed["stale"] >= len(put) - buf.backlog(),
                      "put": len(put), "trained": len(trained), "trained_twice": len(trained) - len(set(trained)),
                      "stale": committed["stale"], "left_unacknowledged": buf.backlog()}
    # 4. trimming
    streams = [keys.reward_stream(ns, s) for s in range(cfg.memory.shards)] + [buf.stream]
    extra = {}
    for st in streams:
        waiting = sum(int(g["pending"]) + int(g.get("lag") or 0) for g in client.xinfo_groups(st))
        extra[st] = client.xlen(st) - waiting
    out["trim"] = {"ok": all(v <= 1 for v in extra.values()), "acknowledged_entries_left": extra}
    out["ok"] = all(v["ok"] for v in out.values() if isinstance(v, dict))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="epiq bench chaos", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--seed", type=int, default=0, help="draws the kill points within the schedule's windows")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--out", type=Path, default=Path("runs/bench/chaos.json"))
    args = p.parse_args(argv)

    from cluster.config import load
    from cluster.job import run_job
    from cluster.services import LocalServices
    from cluster.train import make_run_dir, setup_logging
    from common.caches import redirect_caches

    overrides = ["run.modes=[]", "memory.enabled=true", "memory.shards=2", "learner.enabled=true",
                 "llm.enable_lora=true", "redis.durable=true", "redis.appendfsync=always", "rollout.seeds=[0]",
                 "rollout.epochs=3", "rollout.actors=2", "rollout.concurrency=8", "rollout.max_in_flight=16",
                 "learner.batch_size=8", "memory.claim_idle_s=5",
                 "cluster.num_cpus=3",  # engine 1 + two shards 0.5 each + the learner 0.5 (Ray's logical CPUs; 2 cores here)
                 "env.task_seeds=[1023,1163,1144,1157,1041,1077,1042,1194,1032,1056]",
                 f"run.name=chaos-{time.strftime('%Y%m%d-%H%M%S')}", f"run.output_dir={args.out.parent}", *args.set]
    cfg = load(args.config, overrides)
    rng = random.Random(args.seed)
    points = [(kind, rng.randint(lo, hi)) for kind, (lo, hi) in SCHEDULE]
    run_dir = make_run_dir(cfg, args.config)
    setup_logging(cfg.run.log_level, run_dir)
    redirect_caches(cfg.run.cache_dir)
    kills: list[dict] = []
    load0, t0 = os.getloadavg(), time.perf_counter()
    with LocalServices(cfg, run_dir) as services:
        done = threading.Event()
        chaos = threading.Thread(target=_chaos, args=(run_dir, services, points, done, kills), daemon=True)
        chaos.start()
        try:
            summary = run_job(cfg, run_dir, services.redis_url)
        finally:
            done.set()
            chaos.join(timeout=120)
        result = {"command": "python -m benchmarks.chaos " + " ".join(argv or sys.argv[1:]), "seed": args.seed,
                  "schedule": points, "kills": kills, "wall_s": round(time.perf_counter() - t0, 1),
                  "loadavg_at_start": load0, "run_dir": str(run_dir), "learner": summary.get("learner"),
                  "checks": check(run_dir, cfg, services.redis_url or "")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    for name, c in result["checks"].items():
        if isinstance(c, dict):
            print(f"{'PASS' if c['ok'] else 'FAIL'} {name}: " + ", ".join(f"{k}={v}" for k, v in c.items() if k != "ok"))
    print(f"chaos: {'all checks passed' if result['checks']['ok'] else 'CHECKS FAILED'}; kills: "
          + ", ".join(f"{k['kill']}@{k['after_episodes']}" for k in kills) + f"; wrote {args.out}")
    return 0 if result["checks"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
