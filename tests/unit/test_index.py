"""The shard vector index: exact top-k against brute force, approximate recall, input validation."""

from __future__ import annotations

import numpy as np
import pytest

from memory_server.index import ApproxIndex, ExactIndex, VectorIndex, make_index

DIM = 32


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(ids: list[str], vecs: np.ndarray, q: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
    sims = vecs @ q
    order = np.argsort(-sims, kind="stable")[:k]
    return [ids[i] for i in order], sims[order]


def ids_of(n: int, prefix: str = "m") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


@pytest.fixture(params=["exact", "approx"])
def index(request: pytest.FixtureRequest) -> VectorIndex:
    return make_index(request.param, DIM)


# ---------------------------------------------------------------- exact
@pytest.mark.parametrize("k", [1, 10, 57])
def test_exact_topk_matches_brute_force(k: int) -> None:
    vecs, ids = unit(500), ids_of(500)
    index = ExactIndex(DIM, initial_capacity=8)  # forces several growths
    index.add(ids[:200], vecs[:200])
    index.add(ids[200:], vecs[200:])
    for q in unit(20, seed=1):
        got_ids, got_sims = index.search(q, k)
        want_ids, want_sims = brute_force(ids, vecs, q, k)
        assert got_ids == want_ids
        np.testing.assert_allclose(got_sims, want_sims, rtol=1e-5, atol=1e-6)
        assert got_sims.dtype == np.float32 and np.all(np.diff(got_sims) <= 0)


def test_exact_k_larger_than_size_returns_everything_sorted() -> None:
    vecs, ids = unit(7), ids_of(7)
    index = ExactIndex(DIM)
    index.add(ids, vecs)
    q = unit(1, seed=3)[0]
    got_ids, got_sims = index.search(q, 50)
    assert got_ids == brute_force(ids, vecs, q, 7)[0]
    assert len(got_sims) == 7


def test_empty_index_and_k_zero(index: VectorIndex) -> None:
    q = unit(1)[0]
    ids, sims = index.search(q, 10)
    assert ids == [] and sims.shape == (0,) and len(index) == 0
    index.add(["a"], unit(1, seed=2))
    assert index.search(q, 0)[0] == []


def test_exact_removal_keeps_matrix_dense_and_search_correct() -> None:
    vecs, ids = unit(300), ids_of(300)
    index = ExactIndex(DIM)
    index.add(ids, vecs)
    rng = np.random.default_rng(5)
    gone = set(rng.choice(ids, size=120, replace=False).tolist())
    assert index.remove(sorted(gone) + ["never-added"]) == 120
    assert len(index) == 180
    assert all((id_ in index) != (id_ in gone) for id_ in ids)
    live = [i for i, id_ in enumerate(ids) if id_ not in gone]
    live_ids = [ids[i] for i in live]
    for q in unit(10, seed=6):
        got_ids, got_sims = index.search(q, 15)
        want_ids, want_sims = brute_force(live_ids, vecs[live], q, 15)
        assert got_ids == want_ids
        np.testing.assert_allclose(got_sims, want_sims, rtol=1e-5, atol=1e-6)
    assert not set(index.search(unit(1, seed=7)[0], 300)[0]) & gone
    index.remove(list(index.search(unit(1)[0], 300)[0]))
    assert len(index) == 0 and index.search(unit(1)[0], 5)[0] == []


def test_readding_removed_or_live_id_updates_vector(index: VectorIndex) -> None:
    vecs, ids = unit(50), ids_of(50)
    index.add(ids, vecs)
    target = unit(1, seed=9)[0]
    index.add(["m3"], target[None, :])           # live id: vector replaced, no duplicate
    assert len(index) == 50
    got_ids, got_sims = index.search(target, 3)
    assert got_ids[0] == "m3" and got_sims[0] == pytest.approx(1.0, abs=1e-5)
    assert got_ids.count("m3") == 1
    index.remove(["m7"])
    assert "m7" not in index.search(vecs[7], 50)[0]
    index.add(["m7"], target[None, :])           # removed id comes back with its new vector
    assert len(index) == 50 and "m7" in index
    assert set(index.search(target, 2)[0]) == {"m3", "m7"}


# ---------------------------------------------------------------- approximate
def test_approx_recall_at_10_against_exact() -> None:
    dim, n = 64, 20_000
    rng = np.random.default_rng(11)
    # anisotropic like sentence embeddings (power-law spectrum): isotropic random vectors have no neighbours
    scale = np.arange(1, dim + 1) ** -0.6
    def draw(m: int) -> np.ndarray:
        x = (rng.standard_normal((m, dim)) * scale).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    vecs, ids, queries = draw(n), ids_of(n), draw(200)
    exact, approx = ExactIndex(dim), ApproxIndex(dim, threads=2)
    exact.add(ids, vecs)
    approx.add(ids, vecs)
    hits = [len(set(approx.search(q, 10)[0]) & set(exact.search(q, 10)[0])) / 10 for q in queries]
    assert np.mean(hits) >= 0.95
    got_ids, got_sims = approx.search(queries[0], 10)
    np.testing.assert_allclose(got_sims, vecs[[int(i[1:]) for i in got_ids]] @ queries[0], rtol=1e-4, atol=1e-5)
    assert np.all(np.diff(got_sims) <= 1e-6)


def test_approx_query_beam_per_call() -> None:
    """A wider beam on the same graph finds more true neighbours; a per-call beam leaves the default alone."""
    vecs, ids, queries = unit(5000, 16, seed=3), ids_of(5000), unit(100, 16, seed=4)
    exact, approx = ExactIndex(16), ApproxIndex(16, M=4, ef_construction=10, ef_search=10, threads=1)
    exact.add(ids, vecs)
    approx.add(ids, vecs)
    truth = [set(exact.search(q, 10)[0]) for q in queries]

    def recall(ef: int | None) -> float:
        return float(np.mean([len(set(approx.search(q, 10, ef)[0]) & t) / 10 for q, t in zip(queries, truth)]))

    narrow, wide = recall(None), recall(400)
    assert wide > narrow + 0.1 and wide >= 0.9
    assert approx.ef_search == 10 and recall(None) == narrow
    assert len(approx.search(queries[0], 10, ef=1)[0]) == 10  # a beam below k is raised to k
    assert exact.search(queries[0], 10, ef=1)[0] == exact.search(queries[0], 10)[0]  # exact ignores it


def test_approx_removal_reuses_slots_and_grows() -> None:
    vecs, ids = unit(400), ids_of(400)
    index = ApproxIndex(DIM, initial_capacity=16)  # grows by doubling
    index.add(ids[:300], vecs[:300])
    gone = ids[:150]
    assert index.remove(gone + ["never-added"]) == 150
    assert not set(index.search(vecs[0], 150)[0]) & set(gone)
    capacity = index._index.max_elements
    index.add(ids[300:], vecs[300:])               # 100 new ids fill freed slots: no growth
    assert index._index.max_elements == capacity and len(index) == 250
    live = set(ids[150:])
    assert set(index.search(vecs[399], 250)[0]) == live
    got_ids, _ = index.search(vecs[399], 1)
    assert got_ids == ["m399"]


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("kind", ["exact", "approx"])
def test_wrong_dimension_query_raises_clear_error(kind: str) -> None:
    index = make_index(kind, DIM)
    index.add(["a"], unit(1))
    with pytest.raises(ValueError, match=r"expected \(32,\).*dimension 32"):
        index.search(unit(1, dim=DIM + 1)[0], 1)
    with pytest.raises(ValueError, match="expected"):
        index.search(unit(2), 1)                     # a batch, not one query


@pytest.mark.parametrize("kind", ["exact", "approx"])
def test_bad_vectors_rejected_on_add(kind: str) -> None:
    index = make_index(kind, DIM)
    with pytest.raises(ValueError, match=r"shape \(1, 16\), expected \(1, 32\)"):
        index.add(["a"], unit(1, dim=16))
    with pytest.raises(ValueError, match=r"expected \(2, 32\)"):
        index.add(["a", "b"], unit(3))
    bad = unit(2)
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="vector 1 contains NaN or inf"):
        index.add(["a", "b"], bad)
    with pytest.raises(ValueError, match="L2-normalised"):
        index.add(["a"], 2 * unit(1))
    with pytest.raises(ValueError, match="duplicate ids"):
        index.add(["a", "a"], unit(2))
    assert len(index) == 0


def test_factory_is_explicit() -> None:
    assert isinstance(make_index("exact", 8), ExactIndex)
    assert isinstance(make_index("approx", 8, M=8, ef_search=32), ApproxIndex)
    assert make_index("exact", 8).dim == 8
    with pytest.raises(ValueError, match="expected 'exact' or 'approx'"):
        make_index("faiss", 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        make_index("exact", 0)
