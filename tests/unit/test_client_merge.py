"""Router logic without servers: merging shard answers into the global top-k1, Phase B over the merged pool."""

from __future__ import annotations

import numpy as np

from memory_server.client import merge_candidates, select
from memory_server.records import MemoryRecord, Provenance


def _rec(i: int, q: float, kind: str = "success") -> MemoryRecord:
    return MemoryRecord(namespace="t", intent=f"i{i}", embedding=np.ones(4, np.float32) / 2, experience="e", kind=kind,
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


def test_own_success_sim_keeps_the_tasks_own_success_below_the_floor_and_nothing_else() -> None:
    pool = [(1.0, _rec(1, -0.5)),              # the task's own success, driven below the floor by other tasks
            (1.0, _rec(2, -0.3, "failure")),   # the task's own failure: still floored
            (0.93, _rec(3, -0.2)),             # a sibling's success below the floor: still floored
            (0.9, _rec(4, 0.4))]               # a sibling's success above it
    recs, _, _ = select(pool, lam=0.5, k2=3, q_floor=0.0, epsilon=0.0, q_clip=3.0, rng=None)
    assert [r.id for r in recs] == ["m4"]  # as published: the floor hides the task's own success
    recs, _, _ = select(pool, lam=0.5, k2=3, q_floor=0.0, epsilon=0.0, q_clip=3.0, rng=None, own_success_sim=0.99)
    assert {r.id for r in recs} == {"m1", "m4"}
    recs, _, _ = select(pool, lam=0.5, k2=3, q_floor=None, epsilon=0.0, q_clip=3.0, rng=None, own_success_sim=0.99)
    assert len(recs) == 3  # no floor: nothing to exempt from
