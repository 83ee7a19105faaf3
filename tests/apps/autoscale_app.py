"""The app the autoscaling tests' workers run: `celery -A tests.apps.autoscale_app worker -P ...`.

Its own queue prefix and keyspace, and the tests give it its own Redis database, so its workers
never take the session workers' tasks (nor answer their broadcasts).

Each pool's concurrency modifier is chosen per worker by ``AUTOSCALE_TEST_MODIFIER``:

* ``runpod``: RunPod's example ``adjust_concurrency`` as published (one argument, +1/-1 within
  [1, 10] on a request rate); the "rate" is read from Redis, so the test drives it.
* ``scripted``: does whatever the Redis key ``<keyspace>:mode`` says (``ok:N``, ``raise``,
  ``none``, ``text``, ``negative``, ``huge``, ``hang``), to show each bad-callback case.
* unset: no modifier, the built-in policy.
"""

from __future__ import annotations

import os
import time

from taskpool import TaskPool
from taskpool.core.settings import Settings

KEYSPACE = "autoscale-test"

app = TaskPool(
    "autoscale_tests",
    config=False,
    settings=Settings.from_env(queue_prefix="autoscale-test.", keyspace=KEYSPACE),
)
MODIFIER = os.environ.get("AUTOSCALE_TEST_MODIFIER", "")


@app.task(pool="threads")
def nap_threads(seconds: float) -> list[float]:
    """Sleeps; returns its [start, end] wall-clock interval."""
    start = time.time()
    time.sleep(seconds)
    return [start, time.time()]


@app.task(pool="gevent")
def nap_gevent(seconds: float) -> list[float]:
    start = time.time()
    time.sleep(seconds)  # patched: yields to other greenlets
    return [start, time.time()]


@app.task(pool="prefork")
def nap_prefork(seconds: float) -> list[float]:
    start = time.time()
    time.sleep(seconds)
    return [start, time.time()]


NAP = {"threads": nap_threads, "gevent": nap_gevent, "prefork": nap_prefork}


# -- RunPod's published example, unchanged but for where the rate comes from ------------------
request_rate = 0


def update_request_rate() -> None:
    """RunPod's example simulates the rate; here the test sets it in Redis."""
    global request_rate
    request_rate = int(app.redis.get(f"{KEYSPACE}:request_rate") or 0)


def adjust_concurrency(current_concurrency: int) -> int:
    """RunPod serverless's example concurrency modifier."""
    global request_rate
    update_request_rate()
    max_concurrency = 10
    min_concurrency = 1
    high_request_rate_threshold = 50
    if request_rate > high_request_rate_threshold and current_concurrency < max_concurrency:
        return current_concurrency + 1
    elif request_rate <= high_request_rate_threshold and current_concurrency > min_concurrency:
        return current_concurrency - 1
    return current_concurrency


# -- a modifier that misbehaves on demand --------------------------------------------------------
def scripted(current: int, stats: object) -> object:
    """Returns what the Redis key ``<keyspace>:mode`` says; counts its calls."""
    r = app.redis
    r.incr(f"{KEYSPACE}:calls")
    mode = (r.get(f"{KEYSPACE}:mode") or b"ok:2").decode()
    if mode.startswith("ok:"):
        return int(mode[3:])
    if mode == "raise":
        raise RuntimeError("the modifier fails on purpose")
    if mode == "none":
        return None
    if mode == "text":
        return "three"
    if mode == "negative":
        return -5
    if mode == "huge":
        return 10**9
    if mode == "hang":  # until the test lets go (or 20 s)
        deadline = time.monotonic() + 20
        while r.get(f"{KEYSPACE}:mode") == b"hang" and time.monotonic() < deadline:
            time.sleep(0.05)
        return 3
    raise AssertionError(f"unknown mode {mode!r}")


if MODIFIER == "runpod":
    for _pool in ("prefork", "threads", "gevent"):
        app.concurrency_modifier(adjust_concurrency, pool=_pool)
elif MODIFIER == "scripted":
    for _pool in ("prefork", "threads", "gevent"):
        app.concurrency_modifier(scripted, pool=_pool)
