"""``epiq bench memory``: retrieval latency, scan efficiency and update throughput of the memory server.

One run on this machine, printing a table and writing JSON (default ``runs/bench/memory.json``):
  1. memory bandwidth (a large array copy) and the exact scan's effective bytes/s (one query = one pass
     over the shard's n x d float32 matrix);
  2. retrieval latency p50/p99 of the client call (embedding excluded: random unit query vectors; both
     phases, Ray round trips to the shard actors included) at each size, with 1 and 4 shards, exact and
     approximate index, and the approximate index's recall@k1 against exact;
  3. the MemRL reference approach (a Python loop computing cosine over every stored memory, then Phase B)
     at the same sizes, as the baseline ratio;
  4. reward-update throughput end to end (XADD by the client -> applied by the shards' Lua -> XACK), with
     1 and 4 shards, next to the Redis ceiling (the same Lua update script, pipelined, no streams).

Memories are synthetic unit vectors of dimension 384 (embedding 1M texts would take an hour): by default
``embedlike`` (anisotropic, calibrated to be slightly harder than all-MiniLM-L6-v2 embeddings of real task
texts, see ``benchmarks/index_choice.py``); ``--data uniform`` gives isotropic vectors, the worst case for
an approximate index. Queries come from the same distribution and are never copies of stored vectors.

    python -m benchmarks.memory [--sizes 10000,100000,1000000] [--shards 1,4] [--ef 64,128,256,512]
                                [--scan-threads N] [--data embedlike] [--out FILE]

The approximate index is built once per (size, shards) and queried at every ``--ef`` (HNSW query beam),
so one run shows the recall/latency trade-off that ``memory.hnsw_ef_search`` selects.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import threading
import time
from pathlib import Path

import numpy as np

DIM = 384


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p)) if xs else float("nan")


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - s), dim), dtype=np.float32)
        out[s:s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def memory_bandwidth_gbps(mib: int = 1024, reps: int = 5) -> float:
    """Best copy bandwidth of a large array (bytes read + written per second), in GB/s."""
    src = np.ones(mib * 1024 * 1024 // 8)
    dst = np.empty_like(src)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def scan_gbps(vecs: np.ndarray, queries: np.ndarray) -> float:
    """Effective bytes/s of the exact index: matrix bytes / query time (best of the queries)."""
    from memory_server.index import ExactIndex

    index = ExactIndex(vecs.shape[1])
    index.add([str(i) for i in range(len(vecs))], vecs)
    best = math.inf
    for q in queries[:20]:
        t0 = time.perf_counter()
        index.search(q, 10)
        best = min(best, time.perf_counter() - t0)
    return vecs.nbytes / best / 1e9


def reference_style_latency(vecs: np.ndarray, qs: np.ndarray, queries: np.ndarray, k1: int, k2: int, reps: int) -> list[float]:
    """The MemRL reference code's way: a Python loop of cosine over every stored memory, sort, then Phase B."""
    from memory_server.scoring import phase_b

    rows = list(vecs)  # one vector per stored memory, as the reference keeps them
    out = []
    for q in queries[:reps]:
        t0 = time.perf_counter()
        sims = []
        for i, v in enumerate(rows):
            sims.append((float(np.dot(q, v) / (np.linalg.norm(q) * np.linalg.norm(v))), i))
        sims.sort(reverse=True)
        top = [(s, i) for s, i in sims[:k1] if s > -1.0]
        phase_b(np.array([s for s, _ in top]), qs[[i for _, i in top]], 0.5, k2)
        out.append(time.perf_counter() - t0)
    return out


def populate(store, vecs: np.ndarray, qs: np.ndarray, ns: str) -> float:
    from memory_server.records import MemoryRecord, Provenance

    prov = Provenance("bench", "bench", "bench", "none", 0, "bench", [])
    t0 = time.perf_counter()
    for s in range(0, len(vecs), 10_000):
        store.add([MemoryRecord(namespace=ns, intent=f"task {i}", embedding=vecs[i], experience=f"experience {i}",
                                kind="success", provenance=prov, id=f"{i:08x}", q=float(qs[i]))
                   for i in range(s, min(s + 10_000, len(vecs)))])
    return time.perf_counter() - t0


def bench_retrieval(redis_url: str, vecs: np.ndarray, qs: np.ndarray, queries: np.ndarray, shards: int, kinds: list[str],
                    k1: int, k2: int, n_queries: int, efs: list[int], scan_threads: int = 0) -> list[dict]:
    """One row per index kind; the approximate index gets one row per query beam in ``efs`` (same graph)."""
    import ray
    import redis

    from cluster.config import MemoryConfig
    from cluster.wiring import start_shards
    from memory_server.client import MemoryClient
    from memory_server.store import MemoryStore

    n = len(vecs)
    ns = f"bench-{n}-{shards}"
    client = redis.Redis.from_url(redis_url)
    store = MemoryStore(client, ns, shards)
    load_s = populate(store, vecs, qs, ns)
    truth = [set(_topk_ids(vecs, q, k1)) for q in queries[:n_queries]]
    rows = []
    for kind in kinds:
        cfg = MemoryConfig(namespace=ns, shards=shards, k1=k1, k2=k2, delta=-1.0, index=kind, shard_timeout_s=60.0,
                           scan_threads=scan_threads)
        t0 = time.perf_counter()
        handles = start_shards(cfg, redis_url, num_cpus=0)
        start_s = time.perf_counter() - t0
        mem = MemoryClient(handles, redis_url, cfg, seed=0)
        for ef in (efs if kind == "approx" else [None]):
            for q in queries[:5]:
                mem.retrieve_blocking(q, ef=ef)  # warm-up
            lat, recalls = [], []
            for q, want in zip(queries[:n_queries], truth):
                t0 = time.perf_counter()
                r = mem.retrieve_blocking(q, ef=ef)
                lat.append(time.perf_counter() - t0)
                assert not r.missing_shards
                recalls.append(len(set(r.pool) & want) / k1)  # Phase A pool vs brute force
            rows.append({"n": n, "shards": shards, "index": kind, "ef": ef, "scan_threads": scan_threads,
                         "p50_ms": pct(lat, 50) * 1e3,
                         "p99_ms": pct(lat, 99) * 1e3, "recall_at_k1": float(np.mean(recalls)),
                         "load_redis_s": load_s, "shard_start_s": start_s})
            print(f"  {kind}{'' if ef is None else f' ef={ef}'}: p50 {rows[-1]['p50_ms']:.2f} ms, "
                  f"p99 {rows[-1]['p99_ms']:.2f} ms, recall {rows[-1]['recall_at_k1']:.3f} (start {start_s:.1f} s)",
                  flush=True)
        for h in handles:
            ray.kill(h, no_restart=True)
    return rows


def _topk_ids(vecs: np.ndarray, q: np.ndarray, k: int) -> list[str]:
    sims = vecs @ q
    return [f"{i:08x}" for i in np.argsort(-sims)[:k]]


def bench_updates(redis_url: str, shards: int, n_memories: int, n_events: int, writers: int = 2) -> dict:
    """End-to-end events/s: writers XADD reward events, shard actors apply + ack; timed until none is left."""
    import ray
    import redis

    from cluster.config import MemoryConfig
    from memory_server import keys
    from cluster.wiring import start_shards
    from memory_server.client import MemoryClient
    from memory_server.store import MemoryStore

    ns = f"upd-{shards}"
    client = redis.Redis.from_url(redis_url)
    vecs = unit_vectors(n_memories, 32, seed=3)
    populate(MemoryStore(client, ns, shards), vecs, np.zeros(n_memories), ns)
    cfg = MemoryConfig(namespace=ns, shards=shards, alpha=0.3)
    handles = start_shards(cfg, redis_url, num_cpus=0)
    ids = [f"{i:08x}" for i in range(n_memories)]
    per_writer = n_events // writers
    batch = 200  # events per pipeline round trip of a writer

    def write(w: int) -> None:
        rng = np.random.default_rng(w)
        mem = MemoryClient(handles, redis_url, cfg)
        for s in range(0, per_writer, batch):
            pipe_events = [(f"w{w}-e{s + j}", ids[int(rng.integers(n_memories))]) for j in range(batch)]
            mem.feedback_many([(ep, [m], 1.0) for ep, m in pipe_events])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent_s = time.perf_counter() - t0
    while True:
        left = 0
        for s in range(shards):
            for g in client.xinfo_groups(keys.reward_stream(ns, s)):
                left += int(g["pending"]) + int(g.get("lag") or 0)
        if left == 0:
            break
        time.sleep(0.01)
    total_s = time.perf_counter() - t0
    applied = int(MemoryStore(client, ns, shards).q_stats().get("updates", 0))
    for h in handles:
        ray.kill(h, no_restart=True)
    return {"shards": shards, "events": per_writer * writers, "applied": applied, "send_s": sent_s, "total_s": total_s,
            "events_per_s": per_writer * writers / total_s}


def bench_redis_ceiling(redis_url: str, n_memories: int, n_events: int) -> dict:
    """The store's Lua update script called directly in batches of 1000: no streams, no actors."""
    import redis

    from memory_server.store import MemoryStore

    ns = "ceiling"
    client = redis.Redis.from_url(redis_url)
    store = MemoryStore(client, ns, 1)
    populate(store, unit_vectors(n_memories, 32, seed=4), np.zeros(n_memories), ns)
    ids = [f"{i:08x}" for i in range(n_memories)]
    rng = np.random.default_rng(0)
    events = [(ids[int(rng.integers(n_memories))], f"e{i}", 1.0) for i in range(n_events)]
    t0 = time.perf_counter()
    for s in range(0, n_events, 1000):
        store.apply_rewards(events[s:s + 1000], 0.3)
    dt = time.perf_counter() - t0
    return {"events": n_events, "seconds": dt, "events_per_s": n_events / dt}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="epiq bench memory", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--shards", default="1,4")
    parser.add_argument("--index", default="exact,approx")
    parser.add_argument("--ef", default="64,128,256,512", help="query beams measured on the approximate index")
    parser.add_argument("--scan-threads", type=int, default=0, help="memory.scan_threads of the shards (0 = Ray's)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--reference-queries", type=int, default=5)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--data", choices=["embedlike", "uniform"], default="embedlike")
    parser.add_argument("--k1", type=int, default=10)
    parser.add_argument("--k2", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/memory.json"))
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    shard_counts = [int(x) for x in args.shards.split(",")]
    kinds = args.index.split(",")
    efs = [int(x) for x in args.ef.split(",")]

    from cluster.services import RedisServer, redirect_caches, start_local_ray

    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = args.out.parent / f"memory-bench-{int(time.time())}"
    redirect_caches(Path(".cache"))
    import tempfile

    server = RedisServer(work / "redis").start()
    ray_tmp = Path(tempfile.mkdtemp(prefix="epiq-b-"))
    start_local_ray(temp_dir=ray_tmp, num_cpus=2, num_gpus=0, object_store_mb=1024, dashboard=False, namespace="bench")
    import ray

    result: dict = {"machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count()}, "dim": DIM,
                    "k1": args.k1, "k2": args.k2, "data": args.data,
                    "loadavg_before": __import__("os").getloadavg(),
                    "command": "python -m benchmarks.memory " + " ".join(argv if argv is not None else __import__("sys").argv[1:])}
    try:
        print("measuring memory bandwidth ...", flush=True)
        result["memory_bandwidth_gbps"] = memory_bandwidth_gbps()
        # update throughput first, on an empty server: after the 1M-memory retrieval rows the server is still
        # freeing gigabytes in the background (lazy flush), which cut the measured rate by 5x
        print("update throughput ...", flush=True)
        result["redis_ceiling"] = bench_redis_ceiling(server.url, 10_000, args.events)
        result["updates"] = [bench_updates(server.url, s, 10_000, args.events) for s in shard_counts]
        __import__("redis").Redis.from_url(server.url).flushall()
        rng = np.random.default_rng(1)
        from benchmarks.index_choice import VectorSource

        source = VectorSource(args.data, DIM, seed=7)
        queries = source.draw(max(args.queries, 50))
        result["retrieval"], result["scan"], result["reference"] = [], [], []
        for n in sizes:
            vecs = source.draw(n)
            qs = rng.uniform(-1, 1, size=n)
            result["scan"].append({"n": n, "scan_gbps": scan_gbps(vecs, queries)})
            ref = reference_style_latency(vecs, qs, queries, args.k1, args.k2, args.reference_queries)
            result["reference"].append({"n": n, "p50_ms": pct(ref, 50) * 1e3, "queries": len(ref)})
            for shards in shard_counts:
                print(f"retrieval: n={n} shards={shards} ...", flush=True)
                result["retrieval"] += bench_retrieval(server.url, vecs, qs, queries, shards, kinds, args.k1, args.k2,
                                                       args.queries, efs, args.scan_threads)
                server_client = __import__("redis").Redis.from_url(server.url)
                server_client.flushall()
            del vecs
    finally:
        ray.shutdown()
        server.stop()
        __import__("shutil").rmtree(ray_tmp, ignore_errors=True)
    result["loadavg_after"] = __import__("os").getloadavg()  # other work on the machine skews every figure
    args.out.write_text(json.dumps(result, indent=2))
    print(render(result))
    print(f"\nwrote {args.out}")
    return 0


def render(r: dict) -> str:
    lines = [f"data: {r.get('data', 'uniform')} unit vectors, dim {r['dim']}, k1={r['k1']}, k2={r['k2']}",
             f"memory bandwidth (copy): {r['memory_bandwidth_gbps']:.1f} GB/s", "",
             "| memories | shards | index | p50 ms | p99 ms | recall@k1 | reference loop p50 ms | speed-up (p50) |",
             "|---:|---:|---|---:|---:|---:|---:|---:|"]
    # a row's index: "exact", or "approx ef=N" (the HNSW query beam; older files have no ef)
    ref = {x["n"]: x["p50_ms"] for x in r["reference"]}
    for x in r["retrieval"]:
        index = x["index"] if x.get("ef") is None else f"{x['index']} ef={x['ef']}"
        index += f", {x['scan_threads']} BLAS threads" if x.get("scan_threads") else ""
        lines.append(f"| {x['n']:,} | {x['shards']} | {index} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | "
                     f"{x['recall_at_k1']:.3f} | {ref[x['n']]:.0f} | {ref[x['n']] / x['p50_ms']:.0f}x |")
    lines += ["", "| memories | exact scan GB/s | share of copy bandwidth |", "|---:|---:|---:|"]
    for x in r["scan"]:
        lines.append(f"| {x['n']:,} | {x['scan_gbps']:.1f} | {x['scan_gbps'] / r['memory_bandwidth_gbps']:.0%} |")
    c = r["redis_ceiling"]
    lines += ["", "| update path | events | events/s |", "|---|---:|---:|",
              f"| Redis ceiling (Lua script, batches of 1000, no streams) | {c['events']:,} | {c['events_per_s']:,.0f} |"]
    for u in r["updates"]:
        lines.append(f"| end to end, {u['shards']} shard(s) (XADD -> apply -> XACK) | {u['events']:,} | {u['events_per_s']:,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
