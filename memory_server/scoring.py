"""MemRL retrieval scores and the utility update: pure numpy, no I/O.

Owns: Phase A (similarity gate δ + top-k1), Phase B (z-scored similarity and Q, Q floor, ε-greedy,
top-k2) and Q <- Q + α(r - Q). Shards run Phase A on their own memories (their index applies δ and k1); the
router merges the shards' answers into the global top-k1 by similarity (``client.merge_candidates``) and runs
Phase B on that pool. Indices returned are positions in the arrays passed in.

    cand = phase_a(sims, delta=0.3, k1=5)
    picks, scores = phase_b(sims[cand], qs[cand], lam=0.5, k2=3)     # memories = cand[picks]
"""

from __future__ import annotations

import numpy as np

_EMPTY_IDX = np.zeros(0, dtype=np.int64)


def zscore(x: np.ndarray) -> np.ndarray:
    """(x - mean) / std over ``x``; all zeros when the spread is zero (or float noise around a constant)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    mean = x.mean()
    std = x.std()
    if not std > 1e-12 * max(1.0, abs(mean)):
        return np.zeros_like(x)
    return (x - mean) / std


def phase_a(sims: np.ndarray, delta: float, k1: int) -> np.ndarray:
    """Indices of the candidates with sim > δ, the best ``k1`` of them, by similarity (ties: lower index)."""
    sims = np.asarray(sims)
    idx = np.flatnonzero(sims > delta)
    if idx.size == 0 or k1 <= 0:
        return _EMPTY_IDX
    if idx.size > k1:  # partial selection first: O(n) instead of sorting every hit
        part = np.argpartition(-sims[idx], k1 - 1)[:k1]
        kth = sims[idx[part]].min()
        idx = idx[sims[idx] >= kth]  # keep every tie of the k-th value so the tie-break below is stable
    order = np.lexsort((idx, -sims[idx]))
    return idx[order][:k1].astype(np.int64)


def phase_b(sims: np.ndarray, qs: np.ndarray, lam: float, k2: int, q_floor: float | None = None,
            epsilon: float = 0.0, rng: np.random.Generator | None = None,
            q_clip: float = 3.0, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Value-aware re-ranking of a candidate pool; returns (indices into the pool, their scores).

    1. Drop candidates with Q < ``q_floor`` (when set), except those ``keep`` marks (a boolean mask, e.g. the
       query's own task's success: ``memory.own_success_sim``); z-scores are taken over the candidates that remain.
    2. score = (1 - λ)·z(sim) + λ·clip(z(Q), ±q_clip); keep the top ``k2`` (ties, up to 1e-12:
       higher sim, then lower index).
    3. ε-greedy, per slot: each of the k2 picks is, with probability ε, replaced by a candidate drawn
       uniformly from those not picked (no replacement). The MemRL code instead replaces the whole top-k
       by a random sample of the pool with probability ε; per slot explores as often on average (ε·k2
       exploration picks) but never throws away every good memory at once. With no unpicked candidate
       left (pool <= k2) nothing changes.
    The result is sorted by score, best first.
    """
    sims = np.asarray(sims, dtype=np.float64)
    qs = np.asarray(qs, dtype=np.float64)
    if sims.shape != qs.shape or sims.ndim != 1:
        raise ValueError(f"sims and qs must be 1-D of equal length, got {sims.shape} and {qs.shape}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    pool = np.arange(sims.size)
    if q_floor is not None:
        kept = qs >= q_floor
        if keep is not None:
            keep = np.asarray(keep, dtype=bool)
            if keep.shape != qs.shape:
                raise ValueError(f"keep must have the pool's shape {qs.shape}, got {keep.shape}")
            kept |= keep
        pool = pool[kept]
    if pool.size == 0 or k2 <= 0:
        return _EMPTY_IDX, np.zeros(0)
    z_q = np.clip(zscore(qs[pool]), -q_clip, q_clip)
    scores = (1.0 - lam) * zscore(sims[pool]) + lam * z_q
    key = np.round(scores, 12)  # scores equal up to float noise are ties, broken by similarity
    order = np.lexsort((pool, -sims[pool], -key))  # positions in ``pool``, best first
    picks, rest = list(order[:k2]), list(order[k2:])
    if epsilon > 0.0 and rest:
        rng = rng if rng is not None else np.random.default_rng()
        for slot in range(len(picks)):
            if rest and rng.random() < epsilon:
                picks[slot] = rest.pop(int(rng.integers(len(rest))))
    chosen = np.array(picks, dtype=np.int64)
    chosen = chosen[np.lexsort((pool[chosen], -sims[pool[chosen]], -key[chosen]))]
    return pool[chosen].astype(np.int64), scores[chosen]


def q_update(q: float | np.ndarray, reward: float, alpha: float) -> float | np.ndarray:
    """One MemRL utility step: Q + α(r - Q) (the same expression the Redis script evaluates)."""
    return q + alpha * (reward - q)
