"""Contention safety, checked from records: OS processes hammer one semaphore and log each hold.

Every process logs (slots, start_ns, end_ns) for each hold, with ``start`` taken after the grant
and ``end`` before the release, so each logged interval lies inside the real hold. CLOCK_MONOTONIC
is one clock for every process on the machine, so the intervals of all processes compare.
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
import time
import uuid
from collections import defaultdict

import pytest
import redis

from taskpool.ops.embedded import RedisServer
from taskpool.stores.semaphores import Semaphore

pytestmark = pytest.mark.timeout(60)

Hold = tuple[tuple[int, ...], int, int]  # slots, start_ns, end_ns


def hammer(
    port: int, name: str, capacity: int, owner: str, cycles: int, counts: tuple[int, ...]
) -> list[Hold]:
    """One contender: acquire, hold for 0-0.5 ms, release, ``cycles`` times."""
    rng = random.Random(owner)
    client = redis.Redis(port=port)
    sem = Semaphore(client, name, capacity, ttl=30.0)
    holds: list[Hold] = []
    try:
        for _ in range(cycles):
            lease = sem.acquire(owner, count=rng.choice(counts), timeout=20.0)
            start = time.monotonic_ns()
            pause = rng.choice((0.0, 0.0, 0.0001, 0.0005))
            if pause:
                time.sleep(pause)
            end = time.monotonic_ns()
            assert sem.release(lease), f"{owner} lost lease {lease}"
            holds.append((lease.slots, start, end))
    finally:
        client.close()
    return holds


def max_in_use(holds: list[Hold]) -> int:
    """Most slots in use at any instant (an end at the same ns as a start is counted first)."""
    events = [(start, 1, len(slots)) for slots, start, _ in holds]
    events += [(end, 0, -len(slots)) for slots, _, end in holds]
    in_use = peak = 0
    for _, _, delta in sorted(events):
        in_use += delta
        peak = max(peak, in_use)
    return peak


def slot_conflicts(holds: list[Hold]) -> list[tuple[int, Hold, Hold]]:
    """Pairs of holds that had the same slot index at overlapping times."""
    by_slot: dict[int, list[Hold]] = defaultdict(list)
    for hold in holds:
        for slot in hold[0]:
            by_slot[slot].append(hold)
    conflicts = []
    for slot, slot_holds in by_slot.items():
        slot_holds.sort(key=lambda h: h[1])
        for before, after in itertools.pairwise(slot_holds):
            if after[1] < before[2]:
                conflicts.append((slot, before, after))
    return conflicts


def test_the_checkers_catch_an_overlap() -> None:
    holds: list[Hold] = [((0,), 0, 10), ((1,), 5, 15), ((0, 1), 20, 30), ((1,), 25, 26), ((0,), 30, 31)]
    assert max_in_use(holds) == 3
    assert slot_conflicts(holds) == [(1, ((0, 1), 20, 30), ((1,), 25, 26))]
    assert max_in_use(holds[:2]) == 2
    assert slot_conflicts(holds[:2]) == []


@pytest.mark.parametrize(
    ("capacity", "counts", "processes", "cycles"),
    [
        pytest.param(2, (1,), 6, 400, id="2-slots"),
        pytest.param(3, (1, 1, 2), 6, 250, id="3-slots-mixed-counts"),
    ],
)
def test_never_more_holders_than_slots(
    redis_server: RedisServer, capacity: int, counts: tuple[int, ...], processes: int, cycles: int
) -> None:
    name = f"test:contention:{uuid.uuid4().hex[:12]}"
    args = [(redis_server.port, name, capacity, f"proc:{i}", cycles, counts) for i in range(processes)]
    started = time.monotonic()
    # spawn, not fork: the test process has threads (the redis fixture, pytest-timeout).
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        per_process = pool.starmap(hammer, args)
    elapsed = time.monotonic() - started
    holds = [hold for process_holds in per_process for hold in process_holds]

    assert len(holds) == processes * cycles
    assert slot_conflicts(holds) == []
    assert max_in_use(holds) <= capacity
    assert max_in_use(holds) == capacity, "the contenders never filled the semaphore: the test proved nothing"
    assert all(slot in range(capacity) for slots, _, _ in holds for slot in slots)
    print(f"{len(holds)} holds by {processes} processes on {capacity} slots in {elapsed:.1f} s")
