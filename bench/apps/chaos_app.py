"""The chaos bench's app (bench/chaos.py): queues ``chaos.<pool>``, keyspace ``chaos``; every run
writes idempotent markers to a separate Redis (``CHAOS_MARKERS_URL``) that no fault touches."""

from __future__ import annotations

import json
import os
import time

import redis
from celery import current_task

from taskpool import TaskPool
from taskpool.core.settings import Settings

app = TaskPool("chaos", config=False, settings=Settings.from_env(queue_prefix="chaos.", keyspace="chaos"))
_markers: tuple[int, redis.Redis] | None = None


def markers() -> redis.Redis:
    global _markers
    if _markers is None or _markers[0] != os.getpid():
        _markers = (os.getpid(), redis.Redis.from_url(os.environ["CHAOS_MARKERS_URL"]))
    return _markers[1]


def _run(run: str, label: str, seconds: float) -> str:
    """Record the start (label, pid, worker, time), sleep, record the end; the set ``done`` is the
    idempotent marker (a second run adds nothing), ``runs`` counts every start."""
    m = markers()
    started = time.time()
    start = {"label": label, "pid": os.getpid(), "worker": current_task.request.hostname, "at": started}
    pipe = m.pipeline()
    pipe.hincrby(f"{run}:runs", label, 1)
    pipe.rpush(f"{run}:starts", json.dumps(start))
    pipe.execute()
    time.sleep(seconds)
    pipe = m.pipeline()
    pipe.sadd(f"{run}:done", label)
    pipe.rpush(f"{run}:ends", json.dumps({**start, "end": time.time()}))
    pipe.execute()
    return label


@app.task(pool="prefork")
def work(run: str, label: str, seconds: float) -> str:
    """One of the N tasks."""
    return _run(run, label, seconds)


@app.task(pool="threads")
def steady(run: str, label: str, seconds: float) -> str:
    """The long task (longer than the visibility timeout) and the countdown task: on the threads
    worker, which gets no process fault (only the Redis restarts and failovers)."""
    return _run(run, label, seconds)
