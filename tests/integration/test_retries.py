"""Retries with capped exponential backoff and jitter, then dead letters, through real workers."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
from typing import Any

import pytest
from celery.exceptions import Retry  # noqa: F401  (documented control flow; never caught by retry_on)

from taskpool.core.backoff import Backoff
from tests.conftest import Worker, taskpool_cli

# Retries are scheduled by the worker's timer; allow this much lateness on a busy 2-core machine.
SLACK = 1.0


def test_backoff_bounds_double_and_cap() -> None:
    policy = Backoff(base=1.0, cap=10.0, jitter=False)
    assert [policy.delay(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert Backoff(1.0, 120.0, jitter=False).delay(10_000) == 120.0  # no overflow
    rng = random.Random(7)
    jittered = Backoff(base=0.5, cap=3.0, jitter=True)
    for n in range(8):
        samples = [jittered.delay(n, rng) for _ in range(500)]
        bound = min(3.0, 0.5 * 2**n)
        assert all(0.0 <= s <= bound for s in samples)
        assert max(samples) > 0.8 * bound and min(samples) < 0.2 * bound  # spread over the range


def attempt_times(app: Any, key: str) -> list[float]:
    return [float(t) for t in app.redis.lrange(key, 0, -1)]


def test_fails_twice_then_succeeds_with_jittered_waits(tp_app: Any, pool_workers: dict[str, Worker]) -> None:
    key = f"flaky-{os.urandom(4).hex()}"
    result = tp_app.flaky.delay(key, 2)
    assert result.get(timeout=30) == 3
    assert result.retries == 2  # 3 attempts, as the result backend reports
    times = attempt_times(tp_app.app, key)
    assert len(times) == 3
    waits = [b - a for a, b in itertools.pairwise(times)]
    # backoff=0.4, backoff_max=0.6, full jitter: wait n is in [0, min(0.6, 0.4 * 2**n)].
    assert 0 <= waits[0] <= 0.4 + SLACK, waits
    assert 0 <= waits[1] <= 0.6 + SLACK, waits


def test_waits_without_jitter_follow_the_bounds(tp_app: Any, pool_workers: dict[str, Worker]) -> None:
    key = f"exact-{os.urandom(4).hex()}"
    assert tp_app.flaky_exact.delay(key, 2).get(timeout=30) == 3
    times = attempt_times(tp_app.app, key)
    waits = [b - a for a, b in itertools.pairwise(times)]
    # backoff=0.3 doubling, capped at 0.5: exactly 0.3 then 0.5 (never early).
    assert 0.3 <= waits[0] <= 0.3 + SLACK, waits
    assert 0.5 <= waits[1] <= 0.5 + SLACK, waits


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return taskpool_cli("tests.apps.app", *args)


def test_exhausted_retries_leave_a_dead_letter_that_dead_retry_reruns(
    tp_app: Any, pool_workers: dict[str, Worker]
) -> None:
    app = tp_app.app
    key = f"broken-{os.urandom(4).hex()}"
    result = tp_app.broken.delay(key, reason="disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        result.get(timeout=30)
    assert result.status == "FAILURE"
    assert int(app.redis.get(f"{key}:calls")) == 2  # retries=1: two attempts

    [record] = [d for d in app.dead_letters.list() if d.task_id == result.id]
    assert record.task == "tests.apps.app.broken"
    assert record.args == [key] and record.kwargs == {"reason": "disk full"}
    assert record.attempts == 2
    assert "RuntimeError" in record.exception and "disk full" in record.exception
    assert "Traceback" in record.traceback and "broken" in record.traceback
    assert record.failed_at > 0

    listing = run_cli("dead", "ls")
    assert listing.returncode == 0, listing.stderr
    assert record.id in listing.stdout and "tests.apps.app.broken" in listing.stdout

    app.redis.set(key, "1")  # the cause is fixed; re-run it
    retried = run_cli("dead", "retry", record.id)
    assert retried.returncode == 0, retried.stderr
    new_id = retried.stdout.split(" as task ")[1].split()[0]
    assert app.AsyncResult(new_id).get(timeout=30) == "fixed"
    assert record.id not in {d.id for d in app.dead_letters.list()}

    missing = run_cli("dead", "retry", "nope")
    assert missing.returncode != 0 and "no dead letter with id 'nope'" in missing.stderr


def test_exception_outside_retry_on_fails_at_once(tp_app: Any, pool_workers: dict[str, Worker]) -> None:
    key = f"once-{os.urandom(4).hex()}"
    result = tp_app.not_retried.delay(key)
    with pytest.raises(ValueError, match="not a KeyError"):
        result.get(timeout=30)
    assert int(tp_app.app.redis.get(key)) == 1
    [record] = [d for d in tp_app.app.dead_letters.list() if d.task_id == result.id]
    assert record.attempts == 1


def test_dead_purge(tp_app: Any, pool_workers: dict[str, Worker]) -> None:
    result = tp_app.not_retried.delay(f"purge-{os.urandom(4).hex()}")
    with pytest.raises(ValueError):
        result.get(timeout=30)
    assert tp_app.app.dead_letters.count() >= 1
    purged = run_cli("dead", "purge", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "purged" in purged.stdout
    assert tp_app.app.dead_letters.count() == 0
