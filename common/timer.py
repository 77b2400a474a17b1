"""One small phase timer, used by the agent, the scheduler and the learner so a hot loop reads as named phases.

    timer = Timer()
    with timer("llm"):
        out = await llm.generate(prompt)
    timer.as_dict()          # {"llm": 0.0123}: seconds per phase, summed over every entry
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timer:
    """Seconds spent per named phase, summed over every ``with timer(name):`` block (works across awaits)."""

    def __init__(self, *names: str) -> None:
        self.totals: dict[str, float] = {name: 0.0 for name in names}  # phases listed up front show 0 if unused

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start

    def as_dict(self, digits: int = 4) -> dict[str, float]:
        return {name: round(seconds, digits) for name, seconds in self.totals.items()}
