"""MemRL retrieval math on hand-computed cases (no servers)."""

import numpy as np
import pytest

from memory_server.scoring import phase_a, phase_b, q_update, zscore

R = np.sqrt(1.5)  # z-score of the ends of three evenly spaced values: ±1.2247


def test_zscore_hand_computed_and_zero_variance():
    np.testing.assert_allclose(zscore([1.0, 2.0, 3.0]), [-R, 0.0, R])
    assert zscore([]).size == 0
    np.testing.assert_array_equal(zscore([0.7] * 5), np.zeros(5))
    np.testing.assert_array_equal(zscore([0.1] * 3), np.zeros(3))  # mean is 0.1 + float noise: still zeros
    np.testing.assert_array_equal(zscore([4.0]), [0.0])


def test_phase_a_threshold_top_k_and_order():
    sims = np.array([0.2, 0.9, 0.5, 0.95, 0.31, 0.5])
    np.testing.assert_array_equal(phase_a(sims, delta=0.3, k1=10), [3, 1, 2, 5, 4])
    np.testing.assert_array_equal(phase_a(sims, delta=0.3, k1=3), [3, 1, 2])  # tie 0.5: lower index first
    np.testing.assert_array_equal(phase_a(sims, delta=0.5, k1=10), [3, 1])  # strictly above δ
    assert phase_a(sims, delta=0.96, k1=5).size == 0  # everything below δ: inject nothing
    assert phase_a(np.zeros(0), delta=0.0, k1=5).size == 0


def test_phase_b_empty_and_single():
    idx, scores = phase_b(np.zeros(0), np.zeros(0), lam=0.5, k2=3)
    assert idx.size == 0 and scores.size == 0
    idx, scores = phase_b(np.array([0.4]), np.array([-0.7]), lam=0.5, k2=3)
    np.testing.assert_array_equal(idx, [0])
    np.testing.assert_array_equal(scores, [0.0])  # zero variance in both: z = 0


def test_phase_b_hand_computed_scores():
    sims, qs = np.array([0.9, 0.8, 0.7]), np.array([-1.0, 0.0, 1.0])
    idx, scores = phase_b(sims, qs, lam=0.75, k2=3)  # 0.25·[R, 0, -R] + 0.75·[-R, 0, R]
    np.testing.assert_array_equal(idx, [2, 1, 0])
    np.testing.assert_allclose(scores, [0.5 * R, 0.0, -0.5 * R], atol=1e-12)
    idx, scores = phase_b(sims, qs, lam=0.5, k2=2)  # all scores 0: ties go to higher similarity
    np.testing.assert_array_equal(idx, [0, 1])
    np.testing.assert_allclose(scores, [0.0, 0.0], atol=1e-15)


def test_phase_b_zero_variance_in_sim_or_q():
    sims = np.array([0.5, 0.5, 0.5])
    idx, scores = phase_b(sims, np.array([0.1, 0.9, 0.4]), lam=0.5, k2=3)
    np.testing.assert_array_equal(idx, [1, 2, 0])  # only Q separates them
    qs = np.zeros(3)
    idx, scores = phase_b(np.array([0.3, 0.9, 0.6]), qs, lam=0.9, k2=3)
    np.testing.assert_array_equal(idx, [1, 2, 0])  # only similarity separates them


def test_lambda_zero_is_similarity_order_and_one_is_q_order():
    rng = np.random.default_rng(0)
    sims, qs = rng.uniform(0.3, 1.0, 8), rng.uniform(-1, 1, 8)
    idx, _ = phase_b(sims, qs, lam=0.0, k2=8)
    np.testing.assert_array_equal(idx, np.argsort(-sims))
    idx, _ = phase_b(sims, qs, lam=1.0, k2=8)
    np.testing.assert_array_equal(idx, np.argsort(-qs))


def test_q_floor_drops_before_scoring():
    sims, qs = np.array([0.9, 0.8, 0.7]), np.array([-0.5, 0.2, 0.6])
    idx, scores = phase_b(sims, qs, lam=0.5, k2=3, q_floor=0.0)
    assert set(idx.tolist()) == {1, 2}  # candidate 0 is below the floor
    np.testing.assert_allclose(sorted(scores), [0.0, 0.0], atol=1e-15)  # z over the two that remain: ±1 cancel
    assert phase_b(sims, qs, lam=0.5, k2=3, q_floor=1.0)[0].size == 0


def test_q_floor_spares_the_candidates_keep_marks():
    sims, qs = np.array([0.9, 0.8, 0.7]), np.array([-0.5, -0.4, 0.6])
    idx, scores = phase_b(sims, qs, lam=0.5, k2=3, q_floor=0.0, keep=np.array([True, False, False]))
    assert set(idx.tolist()) == {0, 2}  # 1 is floored, 0 is kept below the floor
    np.testing.assert_allclose(sorted(scores), [0.0, 0.0], atol=1e-15)  # z over the two that remain
    with pytest.raises(ValueError, match="keep"):
        phase_b(sims, qs, lam=0.5, k2=3, q_floor=0.0, keep=np.array([True]))


def test_q_z_score_is_clipped_at_three():
    qs = np.zeros(20)
    qs[7] = 1.0  # z = 0.95 / sqrt(0.0475) = 4.36 before clipping
    idx, scores = phase_b(np.full(20, 0.5), qs, lam=1.0, k2=1)
    assert idx.tolist() == [7] and scores[0] == pytest.approx(3.0)
    idx, scores = phase_b(np.full(20, 0.5), qs, lam=1.0, k2=1, q_clip=10.0)
    assert scores[0] == pytest.approx(0.95 / np.sqrt(0.0475))


def test_epsilon_one_forces_exploration_and_zero_is_greedy():
    sims, qs = np.linspace(0.9, 0.4, 10), np.zeros(10)
    greedy, _ = phase_b(sims, qs, lam=0.5, k2=3, epsilon=0.0)
    np.testing.assert_array_equal(greedy, [0, 1, 2])
    for seed in range(20):
        idx, _ = phase_b(sims, qs, lam=0.5, k2=3, epsilon=1.0, rng=np.random.default_rng(seed))
        assert len(set(idx.tolist())) == 3 and not set(idx.tolist()) & {0, 1, 2}  # every slot explored
    # pool no larger than k2: nothing unpicked to explore with
    idx, _ = phase_b(sims[:3], qs[:3], lam=0.5, k2=3, epsilon=1.0, rng=np.random.default_rng(0))
    assert sorted(idx.tolist()) == [0, 1, 2]


def test_phase_b_rejects_bad_arguments():
    with pytest.raises(ValueError, match="equal length"):
        phase_b(np.zeros(3), np.zeros(2), lam=0.5, k2=1)
    with pytest.raises(ValueError, match="lam"):
        phase_b(np.zeros(3), np.zeros(3), lam=1.5, k2=1)


def test_q_update():
    assert q_update(0.0, 1.0, 0.3) == pytest.approx(0.3)
    assert q_update(0.3, -1.0, 0.3) == pytest.approx(0.3 + 0.3 * (-1.3))
    assert q_update(0.5, 0.5, 0.3) == 0.5
    assert q_update(-0.2, 1.0, 1.0) == 1.0
    np.testing.assert_allclose(q_update(np.array([0.0, 1.0]), 1.0, 0.5), [0.5, 1.0])


def test_a_failed_episode_writes_its_memory_at_q_init_failure():
    """memory.q_init_failure: the writing episode counts as a first failed use; null keeps the published Q_init."""
    from types import SimpleNamespace

    from cluster.config import MemoryConfig
    from memory_server.client import MemoryClient

    prior = SimpleNamespace(cfg=MemoryConfig(q_init=0.0, q_init_failure=-0.3))
    assert MemoryClient.initial_q(prior, won=True) == 0.0 and MemoryClient.initial_q(prior, won=False) == -0.3
    published = SimpleNamespace(cfg=MemoryConfig(q_init=0.1))
    assert MemoryClient.initial_q(published, won=False) == 0.1
    # with q_floor 0 such a memory never reaches the prompt, an untested success does
    picks, _ = phase_b(np.array([1.0, 1.0, 0.95]), np.array([-0.3, 0.0, -0.3]), lam=0.5, k2=1, q_floor=0.0)
    assert picks.tolist() == [1]


def test_the_client_embeds_a_text_once_and_shares_a_read_only_vector():
    from types import SimpleNamespace

    from cluster.config import MemoryConfig
    from memory_server import client as client_mod

    calls = []

    class Embedder:
        def encode(self, texts):
            calls.append(list(texts))
            return np.ones((len(texts), 4), dtype=np.float32) / 2

    me = SimpleNamespace(cfg=MemoryConfig(), embedder=Embedder(), _vectors=client_mod.OrderedDict(),
                         _vectors_lock=client_mod.threading.Lock())
    a = client_mod.MemoryClient.embed(me, "go to the kitchen")
    b = client_mod.MemoryClient.embed(me, "go to the kitchen")
    assert a is b and calls == [["go to the kitchen"]] and not a.flags.writeable
    client_mod.MemoryClient.embed(me, "another task")
    assert len(calls) == 2
