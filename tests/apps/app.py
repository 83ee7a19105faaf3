"""The app the test workers run: `celery -A tests.apps.app worker -P ...`.

Tasks report facts they observe from inside the worker, so tests prove where and how
they ran without trusting the routing table.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from typing import Any

import celery
import redis

from taskpool import TaskPool

app = TaskPool("tests", config=False)

#: max_in_flight of gated_sleep (the session's gevent worker runs -c 20).
GATED_GEVENT_MAX = 5


def _redis() -> redis.Redis:
    return app.redis


def observe() -> dict[str, Any]:
    """Where this code runs: process, thread, greenlet, and what the worker says its pool is."""
    facts: dict[str, Any] = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "thread": threading.current_thread().name,
        "main_thread": threading.current_thread() is threading.main_thread(),
        "worker_pool": app.worker_pool,
        "gevent_patched": False,
        "in_greenlet": False,
    }
    if "gevent" in sys.modules:
        import gevent
        from gevent import monkey

        facts["gevent_patched"] = bool(monkey.is_module_patched("socket"))
        facts["in_greenlet"] = isinstance(gevent.getcurrent(), gevent.Greenlet)
    try:
        from billiard.process import current_process

        facts["process_name"] = current_process().name
    except Exception:  # pragma: no cover - billiard always present with celery
        facts["process_name"] = None
    return facts


@app.task(pool="prefork")
def where_prefork() -> dict[str, Any]:
    return observe()


@app.task(pool="threads")
def where_threads() -> dict[str, Any]:
    return observe()


@app.task(pool="gevent")
def where_gevent() -> dict[str, Any]:
    return observe()


async def _async_observe() -> dict[str, Any]:
    await asyncio.sleep(0.01)
    facts = observe()
    facts["loop_id"] = id(asyncio.get_running_loop())
    # celery.current_task, as user code and libraries read it, after an await.
    facts["current_task_id"] = celery.current_task.request.id
    facts["current_task_hostname"] = celery.current_task.request.hostname
    return facts


@app.task(pool="prefork")
async def async_prefork() -> dict[str, Any]:
    facts = await _async_observe()
    facts["request_id"] = async_prefork.request.id  # the request is visible inside the coroutine
    return facts


@app.task(pool="threads")
async def async_threads() -> dict[str, Any]:
    facts = await _async_observe()
    facts["request_id"] = async_threads.request.id  # the request is visible inside the coroutine
    return facts


@app.task(pool="gevent")
async def async_gevent() -> dict[str, Any]:
    facts = await _async_observe()
    facts["request_id"] = async_gevent.request.id  # the request is visible inside the coroutine
    return facts


@app.task(pool="gevent")
async def async_sleep(seconds: float) -> list[float]:
    """Sleeps; returns its [start, end] wall-clock interval."""
    start = time.time()
    await asyncio.sleep(seconds)
    return [start, time.time()]


@app.task(pool="gevent", max_in_flight=GATED_GEVENT_MAX)
def gated_sleep(seconds: float) -> list[float]:
    """A gated gevent task: sleeps; returns its [start, end] wall-clock interval."""
    start = time.time()
    time.sleep(seconds)
    return [start, time.time()]


@app.task(pool="gevent")
def stamp() -> float:
    """Returns when it ran (wall clock)."""
    return time.time()


@app.task(pool="threads", retries=3, backoff=0.4, backoff_max=0.6, jitter=True, retry_on=(ConnectionError,))
def flaky(key: str, failures: int) -> int:
    """Fails ``failures`` times with ConnectionError, then returns the attempt number."""
    r = _redis()
    r.rpush(key, repr(time.time()))
    attempt = int(r.llen(key))
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} of {key} fails on purpose")
    return attempt


@app.task(pool="threads", retries=1, backoff=0.1, jitter=False)
def broken(key: str, *, reason: str = "broken") -> str:
    """Fails until the Redis key ``key`` exists, then succeeds."""
    r = _redis()
    r.incr(f"{key}:calls")
    if not r.exists(key):
        raise RuntimeError(f"{reason}: {key} not set")
    return "fixed"


@app.task(pool="threads", retries=5, retry_on=(KeyError,))
def not_retried(key: str) -> None:
    """Raises an exception outside retry_on: fails at once."""
    _redis().incr(key)
    raise ValueError("not a KeyError")


@app.task(pool="prefork")
def slow(key: str, seconds: float) -> int:
    """Records each start (with this child's pid), sleeps, returns the number of starts."""
    r = _redis()
    r.rpush(f"{key}:pids", os.getpid())
    time.sleep(seconds)
    return int(r.llen(f"{key}:pids"))


@app.task(pool="prefork")
def sized(key: str, payload: str) -> int:
    """Records each start (with this child's pid); returns the payload's length."""
    _redis().rpush(f"{key}:pids", os.getpid())
    return len(payload)


@app.task(pool="gevent")
def add(x: int, y: int) -> int:
    return x + y


@app.task(pool="prefork")
def double(x: int) -> int:
    return 2 * x


@app.task(pool="threads")
def tag(x: int) -> str:
    return f"result={x}"


@app.task(pool="threads", retries=2, backoff=0.3, backoff_max=0.5, jitter=False)
def flaky_exact(key: str, failures: int) -> int:
    """Like flaky, without jitter: each wait is exactly its bound."""
    return flaky.run(key, failures)


@app.task(pool="threads")
def raise_error(class_name: str, message: str) -> None:
    """Raises taskpool's error class ``class_name``, for the result-backend round trip."""
    from taskpool.core import errors

    raise getattr(errors, class_name)(message)
