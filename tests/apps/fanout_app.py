"""Tasks for the fan-out tests (``task.map``/``starmap``/``spawn``), on queues and keys of their
own (prefix ``fan.``), so the session workers of tests/apps/app.py never take their messages.

Tasks record what ran in Redis (under keys the test passes), so tests check from records which
inputs ran, how often, and how full the queue was while they ran.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time

import redis

from taskpool import TaskPool
from taskpool.core.names import queue_keys as redis_queue_keys
from taskpool.core.settings import Settings

app = TaskPool(
    "fanout", config=False, settings=Settings.from_env(base={"queue_prefix": "fan.", "keyspace": "fan"})
)


def _redis() -> redis.Redis:
    return app.redis


@app.task(pool="threads", name="fanout.square")
def square(x: int) -> int:
    return x * x


@app.task(pool="threads", name="fanout.add")
def add(x: int, y: int, *, scale: int = 1) -> int:
    return (x + y) * scale


@app.task(pool="threads", name="fanout.record")
def record(x: int, key: str) -> int:
    """Counts each run of input ``x`` in the hash ``key``."""
    _redis().hincrby(key, str(x), 1)
    return x


@app.task(pool="threads", name="fanout.check")
def check(x: int, key: str, seconds: float = 0.0) -> int:
    """Records that ``x`` ran (set ``<key>:ran``); fails at once for negative inputs, else
    sleeps ``seconds`` and returns ``x``."""
    _redis().sadd(f"{key}:ran", x)
    if x < 0:
        raise ValueError(f"negative input {x}")
    time.sleep(seconds)
    return x


@app.task(pool="gevent", name="fanout.hold")
def hold(x: int, key: str) -> int:
    """Input 0 waits until the list ``key`` gets an element (at most 20 s); the others return at once."""
    if x == 0:
        deadline = time.monotonic() + 20
        # Short BLPOPs: redis-py's socket timeout (5 s) would cut a longer one.
        while time.monotonic() < deadline and not _redis().blpop([key], timeout=1):
            pass
    return x


@app.task(pool="gevent", name="fanout.nap")
async def nap(x: int, key: str, seconds: float) -> int:
    """Records that ``x`` started, sleeps ``seconds`` (async), returns ``x``."""
    _redis().sadd(f"{key}:ran", x)
    await asyncio.sleep(seconds)
    return x


@app.task(pool="threads", name="fanout.tracked")
def tracked(x: int, key: str, seconds: float) -> int:
    """Backpressure probe: at its start, records how many inputs were running or queued.

    One MULTI: this task counts itself in ``<key>:running`` and reads the lengths of its queue
    (every priority list), so the sum is a consistent snapshot of running + queued.
    """
    r = _redis()
    queue = app.settings.queue_for("threads")
    with r.pipeline(transaction=True) as pipe:
        pipe.incr(f"{key}:running")
        for name in redis_queue_keys(queue):
            pipe.llen(name)
        running, *queued = pipe.execute()
    r.rpush(f"{key}:seen", int(running) + sum(int(n) for n in queued))
    try:
        time.sleep(seconds)
    finally:
        r.decr(f"{key}:running")
    return x


@app.task(pool="prefork", name="fanout.parked")
def parked(x: int) -> int:
    """No worker of the fan-out tests consumes the prefork queue: its messages stay queued."""
    return x


# -- a result backend without the async API (files): map polls it -------------------------------
#: Where its results live; the test module sets it before importing this module, and the
#: worker inherits it.
POLLED_RESULTS = os.environ.setdefault("FANOUT_POLLED_RESULTS", tempfile.mkdtemp(prefix="fanout-results-"))

polled_app = TaskPool(
    "fanout_polled",
    config=False,
    settings=Settings.from_env(
        base={"queue_prefix": "fanp.", "keyspace": "fanp", "result_backend": f"file://{POLLED_RESULTS}"}
    ),
)


@polled_app.task(pool="threads", name="fanout.polled_check")
def polled_check(x: int) -> int:
    """Fails for negative inputs; its result goes to files, not Redis."""
    if x < 0:
        raise ValueError(f"negative input {x}")
    return x * 10
