"""Tasks with limits and GPU slots, on queues and keys of their own (prefix ``lim.``).

Each task logs its interval, pid, worker and GPU slots to Redis, so tests check the
invariants (never more than N at once, distinct GPUs) from records.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

from taskpool import TaskPool, current_gpus, torch_device
from taskpool.settings import Settings

app = TaskPool(
    "limits", config=False, settings=Settings.from_env(base={"queue_prefix": "lim.", "keyspace": "lim"})
)


def push(key: str, value: Any, patience: float = 30.0) -> None:
    """RPUSH that outlasts a Redis restart: tests restart Redis while tasks run."""
    deadline = time.monotonic() + patience
    while True:
        try:
            app.redis.rpush(key, value)
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def record(key: str, seconds: float, **extra: Any) -> dict[str, Any]:
    start = time.time()
    push(f"{key}:started", os.getpid())
    time.sleep(seconds)
    entry = {"start": start, "end": time.time(), "pid": os.getpid(), "gpus": current_gpus(), **extra}
    push(key, json.dumps(entry))
    return entry


@app.task(pool="prefork", max_in_flight=2)
def capped(key: str, seconds: float) -> dict[str, Any]:
    return record(key, seconds)


@app.task(pool="prefork")
def free(key: str, seconds: float) -> dict[str, Any]:
    return record(key, seconds)


@app.task(pool="prefork", cluster_max_in_flight=2, bind=True)
def cluster_capped(self: Any, key: str, seconds: float) -> dict[str, Any]:
    return record(key, seconds, worker=self.request.hostname)


@app.task(pool="prefork", gpu_slots=1)
def on_gpu(key: str, seconds: float) -> dict[str, Any]:
    return record(key, seconds, device=str(torch_device()))


@app.task(pool="threads", limits={"license:test": 1})
def licensed(key: str, seconds: float) -> dict[str, Any]:
    return record(key, seconds)
