"""Router logic without servers: merging shard answers into the global top-k1, Phase B over the merged pool."""

from __future__ import annotations

import numpy as np

from memory_server.client import merge_candidates, select
from memory_server.records import MemoryRecord, Provenance


def _rec(i: int, q: float) -> MemoryRecord:
    return MemoryRecord(namespace="t", intent=f"i{i}", embedding=np.ones(4, np.float32) / 2, experience="e", kind="success",
                        provenance=Provenance("ep", "t", "env", "m", 0, "w"), id=f"m{i}", q=q)


def test_merge_takes_global_top_k1_across_shards() -> None:
    a = [(0.9, _rec(1, 0.0)), (0.5, _rec(2, 0.0))]
    b = [(0.8, _rec(3, 0.0)), (0.7, _rec(4, 0.0)), (0.1, _rec(5, 0.0))]
    pool = merge_candidates([a, b, []], k1=3)
    assert [r.id for _, r in pool] == ["m1", "m3", "m4"]


def test_merge_of_nothing_is_empty_and_select_injects_nothing() -> None:
    assert merge_candidates([[], []], k1=5) == []
    assert select([], lam=0.5, k2=3, q_floor=None, epsilon=0.0, q_clip=3.0, rng=None) == ([], [], [])


def test_select_lambda_zero_is_similarity_order_and_lambda_one_is_q_order() -> None:
    pool = [(0.9, _rec(1, -1.0)), (0.8, _rec(2, 0.0)), (0.7, _rec(3, 1.0))]
    recs, _, sims = select(pool, lam=0.0, k2=2, q_floor=None, epsilon=0.0, q_clip=3.0, rng=None)
    assert [r.id for r in recs] == ["m1", "m2"] and sims == [0.9, 0.8]
    recs, _, _ = select(pool, lam=1.0, k2=2, q_floor=None, epsilon=0.0, q_clip=3.0, rng=None)
    assert [r.id for r in recs] == ["m3", "m2"]


def test_select_q_floor_drops_low_utility_memories() -> None:
    pool = [(0.9, _rec(1, -0.8)), (0.8, _rec(2, 0.2)), (0.7, _rec(3, 0.1))]
    recs, _, _ = select(pool, lam=0.5, k2=3, q_floor=0.0, epsilon=0.0, q_clip=3.0, rng=None)
    assert {r.id for r in recs} == {"m2", "m3"}
