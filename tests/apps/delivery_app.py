"""The app of the delivery tests (tests/integration/test_delivery_leases.py): its own queues
(``dlv.<pool>``) and keyspace, and tasks that record every run in Redis."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

from celery import current_task

from taskpool import TaskPool
from taskpool.core.settings import Settings

app = TaskPool("delivery", config=False, settings=Settings.from_env(queue_prefix="dlv.", keyspace="dlv"))


def record(key: str, event: str, **fields: Any) -> dict[str, Any]:
    request = current_task.request
    entry = {
        "event": event,
        "id": request.id,
        "worker": request.hostname,
        "pid": os.getpid(),
        "redelivered": bool((request.delivery_info or {}).get("redelivered")),
        "at": time.time(),
        **fields,
    }
    app.redis.rpush(f"{key}:runs", json.dumps(entry))
    return entry


@app.task(pool="prefork")
def hold(key: str, first: float, then: float = 0.0) -> int:
    """Takes ``first`` seconds on its first run of this task id, ``then`` on every later run;
    returns how many times this task id started."""
    starts = app.redis.hincrby(f"{key}:starts", current_task.request.id, 1)
    record(key, "start", n=starts)
    time.sleep(first if starts == 1 else then)
    record(key, "end", n=starts)
    return int(starts)


@app.task(pool="prefork")
def mark(key: str, label: str) -> str:
    app.redis.rpush(f"{key}:order", label)
    record(key, "start", label=label)
    return label


@app.task(pool="prefork")
def die_once(key: str) -> str:
    """Its first run kills its own pool process (as the OOM killer would); later runs return."""
    app.redis.rpush(f"{key}:order", "die_once")
    if app.redis.incr(f"{key}:die_attempts") == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@app.task(pool="threads", ignore_result=True)
def sleep_threads(key: str, seconds: float) -> int:
    """Counts its starts, then sleeps ``seconds`` on its first run; writes nothing when it ends,
    no result either (it may end, and be acked, while Redis is down)."""
    starts = app.redis.hincrby(f"{key}:starts", current_task.request.id, 1)
    time.sleep(seconds if starts == 1 else 0.0)
    return int(starts)
