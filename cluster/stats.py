"""Statistics of a comparison over run seeds: Student-t intervals of a mean and of paired differences.

Owns the numbers behind every "better" the report prints. A run seed is the unit of replication (each seed is a
whole run: its own memory, adapter and sampling); a mode's figure is the mean over seeds with a two-sided 95%
Student-t interval, and two modes are compared on the seeds both ran (same seeds, same tasks) through the mean of
their per-seed differences and its interval. A difference is *resolved* only when its interval excludes 0; one
seed gives no interval and resolves nothing.

    iv = interval([0.40, 0.45, 0.35])                  # Interval(mean=0.4, lo=0.276, hi=0.524, n=3, sd=0.05)
    d = paired({0: 0.40, 1: 0.45}, {0: 0.20, 1: 0.30}) # memrl - none on the seeds both ran
    d.resolved, d.direction                            # True / False, +1 (a > b), -1 or 0
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` seeds with its two-sided Student-t interval (lo = hi = nan when n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int
    sd: float  # sample standard deviation (n - 1 in the denominator); nan when n < 2

    @property
    def resolved(self) -> bool:
        """The interval excludes 0 (a difference with a sign the data support)."""
        return self.n >= 2 and (self.lo > 0 or self.hi < 0)

    @property
    def direction(self) -> int:
        """+1 / -1 when resolved above / below 0, else 0."""
        return 0 if not self.resolved else (1 if self.lo > 0 else -1)

    def as_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "resolved": self.resolved}


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean of ``values`` (nan entries dropped) with its Student-t interval."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan)
    mean = statistics.fmean(xs)
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, math.nan)
    sd = statistics.stdev(xs)
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)


def paired(a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE) -> Interval:
    """a - b on the seeds both have (a value of nan on either side drops the seed)."""
    common = sorted(set(a) & set(b))
    return interval([a[s] - b[s] for s in common], confidence)
