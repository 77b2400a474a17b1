"""The memory server's config section (``memory:`` in the YAML): retrieval, utility updates, shards, index.

Every key's doc is the README's config reference (``epiq config --reference``); the driver's loader
(``cluster/config.py``) builds it strictly from YAML and prefixes the key path to any error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from common.config import FieldError, check, doc, non_negative, positive
from common.names import check_namespace

MAX_REWARD = 1e6  # rewards and utilities beyond ± this are refused (MemRL's are ±1; huge ones wreck z-scored Q)


@dataclass
class MemoryConfig:
    """MemRL episodic memory: value-aware two-phase retrieval and utility updates (defaults from the paper)."""

    enabled: bool = doc(True, "Use the episodic memory (false = no-memory baseline, or LoRA-only with learner.enabled).")
    shards: int = doc(1, "Number of memory shard actors.")
    namespace: str = doc("default", "Memory namespace (one per benchmark / tenant).")
    embedder: str = doc("all-MiniLM-L6-v2", "Sentence embedder: 'all-MiniLM-L6-v2' (offline wheel) or a local SentenceTransformer folder.")
    delta: float = doc(0.3, "Phase A similarity threshold δ: candidates need cosine > δ.")
    k1: int = doc(5, "Phase A: candidates kept by similarity.")
    k2: int = doc(3, "Phase B: memories injected into the prompt.")
    lam: float = doc(0.5, "Phase B weight λ of the z-scored Q against z-scored similarity (0 = similarity-only RAG).")
    alpha: float = doc(0.3, "Utility learning rate α in Q <- Q + α(r - Q).")
    q_init: float = doc(0.0, "Q of a newly written memory (of a success memory when q_init_failure is set).")
    q_init_failure: float | None = doc(None, "Q of a new memory written by a failed episode; null = q_init (as published). Setting it to q_init + alpha * (reward_failure - q_init) counts the writing episode as the memory's first (failed) use.")
    q_floor: float | None = doc(None, "Phase B drops candidates with Q below this; null = no floor.")
    own_success_sim: float | None = doc(None, "A success memory at cosine >= this to the query (the same task's intent: 0.99 when intents repeat verbatim) passes q_floor whatever its Q, so other tasks' failures with it cannot hide it from its own task; null = the floor applies to every memory (as published).")
    epsilon: float = doc(0.0, "Probability of an ε-greedy exploration pick in Phase B.")
    capacity: int = doc(100_000, "Maximum memories per namespace; beyond it the lowest-value memories are evicted.")
    evict_age_weight: float = doc(0.1, "Eviction value = Q - evict_age_weight * age in days (0 = by utility only).")
    q_clip: float = doc(3.0, "Phase B clips the z-scored Q to ±q_clip (as the MemRL code does).")
    index: Literal["exact", "approx"] = doc("exact", "Shard vector index: exact scan, or approximate (HNSW) for large shards.")
    hnsw_m: int = doc(16, "Approximate index: HNSW graph degree M (more = better recall, more memory, slower build).")
    hnsw_ef_construction: int = doc(100, "Approximate index: HNSW build beam (more = better graph, slower build).")
    hnsw_ef_search: int = doc(256, "Approximate index: HNSW query beam (more = better recall, slower queries; at least k1 is used). 256: recall@10 0.99 at 100k memories per shard; use 512 for shards of about 1M (recall 0.97; `epiq bench memory`).")
    scan_threads: int = doc(0, "BLAS threads of a shard's exact scan; 0 = as Ray sets it (one per whole CPU the shard reserves). 2 cuts a 100k-memory scan from ~14 to ~8 ms when cores are free.")
    index_threads: int = doc(0, "Threads a shard uses to build its approximate index when it (re)starts; 0 = every core the shard process may use.")
    resources: dict[str, float] = doc({}, "Ray custom resources each memory shard actor requires, e.g. {rollout: 1} to place it on the `rollout` worker group (k8s/).")
    shard_timeout_s: float = doc(2.0, "A retrieval waits this long for each shard, then returns what the others found.")
    claim_idle_s: float = doc(30.0, "Reward events pending this long on a dead consumer are reclaimed by a live one.")
    keep_reward_events: bool = doc(False, "Keep every reward event in the shards' streams after it was applied (a complete event log to replay Q from; grows by one entry per episode and shard). False: applied events are trimmed; the audit stream still records every update.")
    reward_success: float = doc(1.0, "Reward sent to injected memories when the episode succeeds.")
    reward_failure: float = doc(-1.0, "Reward sent to injected memories when the episode fails.")

    def __post_init__(self) -> None:
        positive(self, "shards", "k1", "k2", "capacity", "q_clip", "shard_timeout_s", "claim_idle_s", "hnsw_m",
                  "hnsw_ef_construction", "hnsw_ef_search")
        non_negative(self, "evict_age_weight", "index_threads", "scan_threads")
        check(-1.0 <= self.delta <= 1.0, "delta", f"must be in [-1, 1], got {self.delta}")
        check(0.0 <= self.lam <= 1.0, "lam", f"must be in [0, 1], got {self.lam}")
        check(0.0 < self.alpha <= 1.0, "alpha", f"must be in (0, 1], got {self.alpha}")
        check(self.own_success_sim is None or -1.0 <= self.own_success_sim <= 1.0, "own_success_sim",
              f"must be in [-1, 1] or null, got {self.own_success_sim}")
        check(0.0 <= self.epsilon <= 1.0, "epsilon", f"must be in [0, 1], got {self.epsilon}")
        check(self.k2 <= self.k1, "k2", f"must be <= k1 ({self.k1}), got {self.k2}")
        try:
            check_namespace(self.namespace)
        except ValueError as e:
            raise FieldError("namespace", str(e).removeprefix(f"namespace {self.namespace!r}: ")) from None
        for name in ("reward_success", "reward_failure", "q_init", "q_init_failure"):
            v = getattr(self, name)
            check(v is None or abs(v) <= MAX_REWARD, name, f"must be within ±{MAX_REWARD:g}, got {v}")
        for name in ("q_init", "q_init_failure", "q_floor"):
            v = getattr(self, name)
            check(v is None or math.isfinite(v), name, f"must be a finite number, got {v}")
