"""The work both sides of bench/throughput.py run: the same functions, so only the framework differs."""

from __future__ import annotations

import time


def busy(seconds: float) -> int:
    """Keep a core busy for ``seconds`` of wall time (a CPU-bound step)."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n
