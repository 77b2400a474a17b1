"""Choose the approximate vector index for memory shards by measurement (faiss-cpu, hnswlib, usearch).

Owns: generating the vectors, exact ground truth, and for each candidate library and HNSW setting its build
time, memory, single-query latency p50/p99 (one thread, as a shard actor has one CPU) and recall@k against
exact search; for libraries that can delete, recall again after churn (evict a fraction, add as many new).
Prints a markdown table (``load``: the machine's 1-minute load average when the row was measured; other work on
the same cores inflates p99) and writes JSON. Run:

    python -m benchmarks.index_choice --n 1000000                      # the chosen library, ~10 min here
    python -m benchmarks.index_choice --n 100000 --libs faiss,hnswlib,usearch --data embedlike,uniform --M 16,32

Data sets (queries are drawn from the same distribution, never copies of stored vectors):
- ``embedlike``: unit vectors from an anisotropic Gaussian (power-law spectrum, variance of component i ~ i^-1.2,
  plus a shared mean direction). Its local intrinsic dimension (about 28 at n=2,319) and relative contrast (1.56)
  are slightly *harder* than all-MiniLM-L6-v2 embeddings of the 2,319 LLB/GSM8K task texts (19 and 1.67).
- ``uniform``: isotropic random unit vectors, the worst case: every point is almost equally far from a query,
  so no graph or cluster index finds the exact top-k without visiting most of the data.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import psutil

from memory_server.index import ExactIndex


# ---------------------------------------------------------------- data
class VectorSource:
    """Draws unit vectors of one data set; data and queries share its basis."""

    def __init__(self, kind: str, dim: int, seed: int) -> None:
        if kind not in ("embedlike", "uniform"):
            raise ValueError(f"--data {kind!r}: expected 'embedlike' or 'uniform'")
        self.kind, self.dim = kind, dim
        self.rng = np.random.default_rng(seed)
        if kind == "embedlike":
            basis, _ = np.linalg.qr(self.rng.standard_normal((dim, dim)))
            sd = np.arange(1, dim + 1) ** -0.6
            self.mix = (basis * (sd / np.sqrt((sd**2).sum()))).T.astype(np.float32)  # (dim, dim): z @ mix
            mean = self.rng.standard_normal(dim)
            self.mean = (0.4 * mean / np.linalg.norm(mean)).astype(np.float32)

    def draw(self, n: int, chunk: int = 100_000) -> np.ndarray:
        out = np.empty((n, self.dim), dtype=np.float32)
        for s in range(0, n, chunk):
            z = self.rng.standard_normal((min(chunk, n - s), self.dim), dtype=np.float32)
            if self.kind == "embedlike":
                z = z @ self.mix + self.mean
            out[s : s + len(z)] = z / np.linalg.norm(z, axis=1, keepdims=True)
        return out


def exact_topk(data: np.ndarray, queries: np.ndarray, k: int, block: int = 64) -> np.ndarray:
    """Row indices of the exact top-k by inner product, best first: (n_queries, k)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), block):
        sims = queries[s : s + block] @ data.T
        part = np.argpartition(sims, -k, axis=1)[:, -k:]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
        out[s : s + block] = np.take_along_axis(part, order, axis=1)
    return out


def recall(found: list[np.ndarray], truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


# ---------------------------------------------------------------- candidates
class Candidate:
    """One library's HNSW index behind the few calls this benchmark needs; labels are int row numbers."""

    name = ""
    can_remove = False

    def build(self, data: np.ndarray, M: int, ef_construction: int, threads: int) -> None: ...
    def set_ef(self, ef: int) -> None: ...
    def search(self, q: np.ndarray, k: int) -> np.ndarray: ...
    def remove(self, labels: np.ndarray) -> None: ...
    def add(self, labels: np.ndarray, vecs: np.ndarray, threads: int) -> None: ...


class Hnswlib(Candidate):
    name, can_remove = "hnswlib", True

    def build(self, data, M, ef_construction, threads):
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=data.shape[1])
        self.index.init_index(max_elements=len(data), M=M, ef_construction=ef_construction, allow_replace_deleted=True)
        self.index.add_items(data, np.arange(len(data)), num_threads=threads)

    def set_ef(self, ef):
        self.index.set_ef(ef)

    def search(self, q, k):
        return self.index.knn_query(q, k=k, num_threads=1)[0][0]

    def remove(self, labels):
        for label in labels.tolist():
            self.index.mark_deleted(label)

    def add(self, labels, vecs, threads):
        self.index.add_items(vecs, labels, num_threads=threads, replace_deleted=True)


class FaissHnsw(Candidate):
    name, can_remove = "faiss", False  # IndexHNSWFlat.remove_ids raises: tombstones + rebuild would be needed

    def build(self, data, M, ef_construction, threads):
        import faiss

        self.faiss = faiss
        self.index = faiss.IndexHNSWFlat(data.shape[1], M, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        faiss.omp_set_num_threads(threads)
        self.index.add(data)
        faiss.omp_set_num_threads(1)

    def set_ef(self, ef):
        self.index.hnsw.efSearch = ef

    def search(self, q, k):
        return self.index.search(q[None, :], k)[1][0]


class Usearch(Candidate):
    name, can_remove = "usearch", True

    def build(self, data, M, ef_construction, threads):
        from usearch.index import Index

        self.index = Index(ndim=data.shape[1], metric="ip", dtype="f32", connectivity=M, expansion_add=ef_construction)
        self.index.add(np.arange(len(data)), data, threads=threads)

    def set_ef(self, ef):
        self.index.expansion_search = ef

    def search(self, q, k):
        return self.index.search(q, k, threads=1).keys

    def remove(self, labels):
        self.index.remove(labels)

    def add(self, labels, vecs, threads):
        self.index.add(labels, vecs, threads=threads)


def make_candidate(name: str) -> Candidate:
    if name == "hnswlib":
        return Hnswlib()
    elif name == "faiss":
        return FaissHnsw()
    elif name == "usearch":
        return Usearch()
    raise ValueError(f"--libs {name!r}: expected faiss, hnswlib or usearch")


# ---------------------------------------------------------------- measuring
def rss() -> int:
    return psutil.Process().memory_info().rss


def latencies(search, queries: np.ndarray, k: int) -> tuple[list[np.ndarray], np.ndarray]:
    for q in queries[:20]:  # warm caches and lazy allocations
        search(q, k)
    found, times = [], np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        found.append(np.asarray(search(q, k)))
        times[i] = time.perf_counter() - t0
    return found, times * 1e3


def measure_exact(data: np.ndarray, queries: np.ndarray, truth: np.ndarray, ks: list[int], n_queries: int) -> list[dict]:
    index = ExactIndex(data.shape[1], initial_capacity=len(data))
    index.add([str(i) for i in range(len(data))], data)
    rows = []
    for k in ks:
        found, ms = latencies(lambda q, k: [int(i) for i in index.search(q, k)[0]], queries[:n_queries], k)
        rows.append(dict(lib="exact (numpy)", k=k, load_avg_1m=os.getloadavg()[0], p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)),
                         recall=recall(found, truth[:n_queries], k)))
    scan_gbps = data.nbytes / (rows[0]["p50_ms"] / 1e3) / 1e9
    for r in rows:
        r["scan_gb_per_s_at_p50"] = scan_gbps
    return rows


def measure_candidate(name: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray, source: VectorSource,
                      M: int, args: argparse.Namespace) -> list[dict]:
    cand = make_candidate(name)
    gc.collect()
    rss0, t0 = rss(), time.perf_counter()
    cand.build(data, M, args.ef_construction, args.threads)
    build_s, mem_mb = time.perf_counter() - t0, (rss() - rss0) / 2**20
    base = dict(lib=name, M=M, ef_construction=args.ef_construction, build_s=build_s, mem_mb=mem_mb,
                can_remove=cand.can_remove, load_avg_1m=os.getloadavg()[0])
    rows = []
    for ef in args.ef:
        cand.set_ef(ef)
        for k in args.k:
            found, ms = latencies(cand.search, queries, k)
            rows.append(dict(base, ef_search=ef, k=k, p50_ms=float(np.percentile(ms, 50)),
                             p99_ms=float(np.percentile(ms, 99)), recall=recall(found, truth, k)))
    if cand.can_remove and args.churn > 0:
        rows += measure_churn(cand, data, queries, source, base, args)
    del cand
    gc.collect()
    return rows


def measure_churn(cand: Candidate, data: np.ndarray, queries: np.ndarray, source: VectorSource, base: dict,
                  args: argparse.Namespace) -> list[dict]:
    """Evict a random fraction, add as many new vectors (reusing the freed slots), and measure recall again."""
    n, m = len(data), int(len(data) * args.churn)
    rng = np.random.default_rng(args.seed + 1)
    gone = rng.choice(n, size=m, replace=False)
    new_vecs, new_labels = source.draw(m), np.arange(n, n + m)
    t0 = time.perf_counter()
    cand.remove(gone)
    remove_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cand.add(new_labels, new_vecs, args.threads)
    add_s = time.perf_counter() - t0
    keep = np.ones(n, dtype=bool)
    keep[gone] = False
    live_labels = np.concatenate([np.flatnonzero(keep), new_labels])
    live = np.concatenate([data[keep], new_vecs])
    kmax = max(args.k)
    truth = live_labels[exact_topk(live, queries, kmax)]
    ef = args.churn_ef
    cand.set_ef(ef)
    rows = []
    for k in args.k:
        found, ms = latencies(cand.search, queries, k)
        rows.append(dict(base, ef_search=ef, k=k, p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)),
                         recall=recall(found, truth, k), churn=args.churn, remove_s=remove_s, add_s=add_s))
    return rows


# ---------------------------------------------------------------- report
def table(rows: list[dict]) -> str:
    head = ("| data | n | library | M | efC | ef | k | build s | mem MB | p50 ms | p99 ms | recall@k | delete | after churn "
            "| load |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        f = lambda key, fmt: format(r[key], fmt) if key in r else "-"  # noqa: E731
        delete = "-" if "can_remove" not in r else ("yes" if r["can_remove"] else "no")
        churn = f"{r['churn']:.0%} (rm {r['remove_s']:.1f}s, add {r['add_s']:.1f}s)" if "churn" in r else ""
        lines.append(f"| {r['data']} | {r['n']:,} | {r['lib']} | {f('M', 'd')} | {f('ef_construction', 'd')} | "
                     f"{f('ef_search', 'd')} | {r['k']} | {f('build_s', '.1f')} | {f('mem_mb', '.0f')} | "
                     f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['recall']:.4f} | {delete} | {churn} | {r['load_avg_1m']:.1f} |")
    return "\n".join(lines)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="stored vectors")
    p.add_argument("--dim", type=int, default=384, help="vector dimension")
    p.add_argument("--queries", type=int, default=1000, help="single queries timed per setting")
    p.add_argument("--exact-queries", type=int, default=100, help="queries timed for exact search")
    p.add_argument("--data", default="embedlike", help="comma list of: embedlike, uniform")
    p.add_argument("--libs", default="hnswlib", help="comma list of: faiss, hnswlib, usearch")
    p.add_argument("--M", type=ints, default=[16], help="HNSW graph degrees, comma list")
    p.add_argument("--ef-construction", type=int, default=100, help="HNSW build beam width")
    p.add_argument("--ef", type=ints, default=[64, 128, 256], help="HNSW search beam widths, comma list")
    p.add_argument("--k", type=ints, default=[10, 50], help="result counts, comma list")
    p.add_argument("--churn", type=float, default=0.05, help="fraction evicted and replaced after the sweep (0: skip)")
    p.add_argument("--churn-ef", type=int, default=128, help="search beam width measured after churn")
    p.add_argument("--threads", type=int, default=psutil.cpu_count(), help="threads for building")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench/index_choice.json"))
    args = p.parse_args(argv)

    rows: list[dict] = []
    for kind in args.data.split(","):
        source = VectorSource(kind, args.dim, args.seed)
        t0 = time.perf_counter()
        data, queries = source.draw(args.n), source.draw(args.queries)
        truth = exact_topk(data, queries, max(args.k))
        print(f"[{kind}] {args.n:,} x {args.dim} drawn with exact ground truth in {time.perf_counter() - t0:.1f}s", flush=True)
        for r in measure_exact(data, queries, truth, args.k, args.exact_queries):
            rows.append(dict(r, data=kind, n=args.n))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        for lib in args.libs.split(","):
            for M in args.M:
                for r in measure_candidate(lib, data, queries, truth, source, M, args):
                    rows.append(dict(r, data=kind, n=args.n))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
        del data, truth
        gc.collect()

    print()
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = dict(cpu=platform.processor() or platform.machine(), cores=psutil.cpu_count(),
                   ram_gb=round(psutil.virtual_memory().total / 2**30, 1))
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps(dict(config=config, machine=machine, rows=rows), indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
