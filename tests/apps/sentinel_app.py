"""The app of the Sentinel failover test (tests/integration/test_sentinel.py): broker and backend on
a ``sentinel://`` URL (``TASKPOOL_BROKER_URL``), its own queues (``snt.<pool>``); each run is
recorded in a separate plain Redis (``SENTINEL_MARKERS_URL``), which no failover touches."""

from __future__ import annotations

import os
import time

import redis
from celery import current_task

from taskpool import TaskPool
from taskpool.core.settings import Settings

app = TaskPool("sentinel", config=False, settings=Settings.from_env(queue_prefix="snt.", keyspace="snt"))
_markers: tuple[int, redis.Redis] | None = None


def markers() -> redis.Redis:
    global _markers
    if _markers is None or _markers[0] != os.getpid():
        _markers = (os.getpid(), redis.Redis.from_url(os.environ["SENTINEL_MARKERS_URL"]))
    return _markers[1]


@app.task(pool="prefork")
def step(key: str, i: int, seconds: float = 0.1) -> int:
    """Records its start and its end (idempotent markers: a set of done inputs, a count of runs)."""
    markers().hincrby(f"{key}:runs", str(i), 1)
    time.sleep(seconds)
    markers().sadd(f"{key}:done", i)
    return i


@app.task(pool="prefork", max_in_flight=1)
def limited(key: str, i: int) -> int:
    """Through the admission gate (a limit slot in the sentinel-managed Redis)."""
    markers().hincrby(f"{key}:runs", f"limited-{i}", 1)
    time.sleep(0.05)
    markers().sadd(f"{key}:done", f"limited-{i}")
    assert current_task.request.id
    return i
