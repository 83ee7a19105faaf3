"""Capped exponential backoff with full jitter: the delay before a task's next attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Wait before retry number ``n`` (0-based): ``min(cap, base * 2**n)``, fully jittered.

    With jitter the wait is uniform in ``[0, min(cap, base * 2**n)]`` (AWS's "full jitter"),
    which spreads a thundering herd of retries; without it the wait is exactly the bound.
    """

    base: float
    cap: float
    jitter: bool = True

    def bound(self, n: int) -> float:
        # 2**n overflows float for large n; the cap is reached long before.
        return self.cap if n >= 64 else min(self.cap, self.base * (2.0**n))

    def delay(self, n: int, rng: random.Random | None = None) -> float:
        upper = self.bound(n)
        if not self.jitter:
            return upper
        return (rng or random).uniform(0.0, upper)
