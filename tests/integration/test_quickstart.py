"""The quickstart's learning loop: the mode comparison writes its table and plot, and utilities learn from rewards.

- A short ``run.modes: [none, rag, memrl, lora]`` run through the real driver (2 epochs, groups of 2 episodes per
  game, a held-out game) prints the table and leaves ``comparison.{md,png,json}``, one run folder per mode, the held-out episodes (memory frozen)
  and the learner's adapters: weight updates toggled by config alone.
- In memrl mode on the shared engine, with each game's memory seeded with the right walkthrough and another game's
  (both under the game's own intent, so similarity cannot tell them apart), the memories that were injected into
  failed episodes end with lower Q than those injected into won episodes — the reward stream reached the right
  memories through Redis Streams and the shards.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from cluster.config import load

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
GROUP = [1023, 1163, 1144, 1157]  # one distractor group of the quickstart task set


def test_quickstart_modes_write_table_and_plot(tmp_path: Path, env_without_ray: dict) -> None:
    args = [sys.executable, "-m", "cluster.train", "--config", "configs/quickstart.yaml",
            *[a for o in (f"run.output_dir={tmp_path}", "run.name=q", "rollout.epochs=2", f"env.task_seeds={GROUP[:2]}",
                          "env.heldout_seeds=[1029]", "env.max_steps=4", "run.modes=[none,rag,memrl,lora]",
                          "learner.batch_size=2", "learner.minibatches=2", "learner.max_staleness=4", "rollout.seeds=[0]", "rollout.group_size=2")
              for a in ("--set", o)]]
    proc = subprocess.run(args, cwd=ROOT, env=env_without_ray, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "q"
    for mode in ("none", "rag", "memrl", "lora"):
        rows = [json.loads(x) for x in (run / mode / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [0, 1]
        assert all(r["errors"] == 0 for r in rows)
        held = [json.loads(x) for x in (run / mode / "heldout" / "episodes.jsonl").read_text().splitlines()]
        assert [e["task_id"].rsplit("/", 1)[1] for e in held] == ["1029"] * 2  # the transfer check ran (a group
        assert all(e["written_memory_id"] is None for e in held)  # of 2), memory frozen
        assert f"| {mode} |" in proc.stdout
    # the learner trained on the lora run's 8 trajectories (2 games x 2 epochs x groups of 2; with η = 4 none is
    # stale at batch 2, the config's η = 1 may drop some) and its adapters served later episodes
    learner = json.loads((run / "summary.json").read_text())["modes"]["lora"]["learner"]["0"]
    assert learner["totals"]["trained"] == 8 and learner["version"] >= 1
    lora_eps = [json.loads(x) for x in (run / "lora" / "episodes.jsonl").read_text().splitlines()]
    assert (run / "lora" / "learner" / "s0" / "adapters" / "v1").is_dir()
    assert all(e["adapter_versions"] == [0] for e in lora_eps if e["epoch"] == 0)
    assert f"plot: {run / 'comparison.png'}" in proc.stdout
    assert (run / "comparison.png").stat().st_size > 1000 and (run / "comparison.md").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["last"]) == {"none", "rag", "memrl", "lora"}
    none_rows = [json.loads(x) for x in (run / "none" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["retrieval_hit_rate"] == 0 for r in none_rows)  # none really runs without memory


def test_q_of_memories_that_led_to_failures_ends_below_those_that_led_to_successes(
        tmp_path: Path, ray_session, redis_url: str, llm_pool, tiny_model: Path) -> None:
    import ray

    from actors.envs import make_env, task_set
    from actors.prompting import experience_text
    from cluster.job import _run_one, mode_config, seed_config
    from cluster.wiring import start_shards
    from memory_server.client import MemoryClient
    from memory_server.embedder import load_embedder
    from memory_server.store import MemoryStore

    asyncio.run(llm_pool.publish_adapter(0, ""))  # the shared engine serves the base model (frozen LLM)
    cfg = mode_config(load(ROOT / "configs/quickstart.yaml", [f"env.task_seeds={GROUP}", "rollout.epochs=3", "rollout.seeds=[0]", "rollout.group_size=1",
                                                               "llm.temperature=0", f"run.cache_dir={ROOT / '.cache'}"]),
                      "memrl")
    tasks = task_set(cfg.env)
    scfg = seed_config(cfg, 0)
    env = make_env(cfg.env, cache_dir=cfg.run.cache_dir)
    games = {t.task_id: env.reset(t) for t in tasks}
    env.close()

    # seed each game's memory with its right route and a wrong one (the next game's), both under its own intent
    shards = start_shards(scfg.memory, redis_url)
    client = MemoryClient(shards, redis_url, scfg.memory, load_embedder(scfg.memory.embedder))
    seeded: dict[str, str] = {}
    for i, t in enumerate(tasks):
        obs, other = games[t.task_id], games[tasks[(i + 1) % len(tasks)].task_id]
        for label, route in (("right", obs.info["walkthrough"]), ("wrong", other.info["walkthrough"])):
            mid = asyncio.run(client.write_episode(
                episode_id=f"seeded/{t.task_id}/{label}", intent=obs.intent,
                experience=experience_text(True, route, obs.goal, "You won!"), won=True, task_id=t.task_id,
                env="textworld", model_id="seeded", adapter_version=0, writer="test", retrieved_ids=[]))
            seeded[mid] = label
    for h in shards:
        ray.kill(h, no_restart=True)

    summary = _run_one(cfg, tmp_path, "qtest", redis_url, tasks, [], str(tiny_model), llm_pool, None)
    assert summary["seeds"]

    episodes = [json.loads(x) for x in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert all(e["error"] is None for e in episodes) and len(episodes) == 3 * len(tasks)
    outcomes: dict[str, set[bool]] = defaultdict(set)
    for e in episodes:
        for mid in e["retrieved_ids"]:
            outcomes[mid].add(e["won"])
    import redis as redis_lib

    store = MemoryStore(redis_lib.Redis.from_url(redis_url), scfg.memory.namespace, scfg.memory.shards)
    q = {r.id: r.q for s in range(scfg.memory.shards) for r in store.iter_shard(s)}
    only_failed = [q[m] for m, o in outcomes.items() if o == {False}]
    only_won = [q[m] for m, o in outcomes.items() if o == {True}]
    assert only_failed and only_won, f"need both outcomes to compare: {dict(outcomes)}"
    assert max(only_failed) < min(only_won)
    # and the model did what retrieval gave it: the right seeded route wins more often than the wrong one
    wins = defaultdict(list)
    for e in episodes:
        if e["retrieved_ids"] and e["retrieved_ids"][0] in seeded:
            wins[seeded[e["retrieved_ids"][0]]].append(e["won"])
    if wins["right"] and wins["wrong"]:
        assert sum(wins["right"]) / len(wins["right"]) > sum(wins["wrong"]) / len(wins["wrong"])
