"""Intervals over seeds and paired differences (cluster.stats), checked against hand-computed values."""

from __future__ import annotations

import math

import pytest

from cluster.stats import interval, paired, t_quantile


def test_t_quantiles_match_the_table() -> None:
    # Student-t 97.5% points from any printed table
    assert t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert t_quantile(0.975, 30) == pytest.approx(2.0423, abs=1e-4)


def test_interval_of_a_mean_by_hand() -> None:
    # mean 0.4, sd 0.05, half width 4.3027 * 0.05 / sqrt(3) = 0.12421
    iv = interval([0.40, 0.45, 0.35])
    assert (iv.mean, iv.sd, iv.n) == (pytest.approx(0.4), pytest.approx(0.05), 3)
    assert (iv.lo, iv.hi) == (pytest.approx(0.27579, abs=1e-5), pytest.approx(0.52421, abs=1e-5))
    assert iv.resolved and iv.direction == 1  # excludes 0
    # mean 2.5, sd 1.29099, half width 3.18245 * 1.29099 / 2 = 2.05426
    iv = interval([1, 2, 3, 4])
    assert (iv.lo, iv.hi) == (pytest.approx(0.44574, abs=1e-5), pytest.approx(4.55426, abs=1e-5))


def test_one_seed_gives_no_interval_and_resolves_nothing() -> None:
    iv = interval([0.7])
    assert iv.mean == 0.7 and iv.n == 1 and math.isnan(iv.lo) and math.isnan(iv.hi)
    assert not iv.resolved and iv.direction == 0
    assert interval([]).n == 0 and math.isnan(interval([]).mean)
    assert interval([0.2, float("nan"), 0.4]).n == 2  # a seed without the figure is left out


def test_paired_difference_by_hand_and_on_common_seeds_only() -> None:
    # differences 0.3, 0.4, 0.4: mean 0.36667, sd 0.057735, half width 4.3027 * 0.057735 / sqrt(3) = 0.14342
    d = paired({0: 0.5, 1: 0.6, 2: 0.7, 9: 1.0}, {0: 0.2, 1: 0.2, 2: 0.3, 5: 0.0})
    assert d.n == 3 and d.mean == pytest.approx(0.366667, abs=1e-6)
    assert (d.lo, d.hi) == (pytest.approx(0.22324, abs=1e-5), pytest.approx(0.51009, abs=1e-5))
    assert d.resolved and d.direction == 1
    assert paired({0: 0.2, 1: 0.3, 2: 0.25}, {0: 0.5, 1: 0.5, 2: 0.5}).direction == -1


def test_pairing_resolves_what_separate_intervals_cannot() -> None:
    """Seeds differ a lot (hard and easy seeds) but a beats b by 5 points on every seed: the two means' intervals
    overlap, the paired difference is resolved."""
    a, b = {0: 0.30, 1: 0.50, 2: 0.70}, {0: 0.25, 1: 0.45, 2: 0.65}
    ia, ib = interval(list(a.values())), interval(list(b.values()))
    assert ia.lo < ib.hi  # overlapping
    d = paired(a, b)
    assert d.mean == pytest.approx(0.05) and d.resolved
    # a noisy difference that straddles 0 is not
    assert not paired({0: 0.5, 1: 0.3, 2: 0.6}, {0: 0.4, 1: 0.4, 2: 0.4}).resolved
