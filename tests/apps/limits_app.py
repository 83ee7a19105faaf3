"""Tasks with limits and GPU slots, on queues and keys of their own (prefix ``lim.``).

Each task logs its interval, pid, worker and GPU slots to Redis, so tests check the
invariants (never more than N at once, distinct GPUs) from records.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import redis

from taskpool import TaskPool, current_gpus, torch_device
from taskpool.core.settings import Settings

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
    return record(key, seconds, worker=self.request.hostname, task=self.request.id)


@app.task(pool="prefork", gpu_slots=1)
def on_gpu(key: str, seconds: float) -> dict[str, Any]:
    return record(key, seconds, device=str(torch_device()))


@app.task(pool="prefork", gpu_slots=1, bind=True)
def on_gpu_here(self: Any, key: str, seconds: float) -> dict[str, Any]:
    """Records the machine it ran on (a worker in its own UTS namespace has its own) and its id."""
    return record(key, seconds, host=socket.gethostname(), task=self.request.id)


@app.task(pool="prefork", limits={"disk:{hostname}": 1}, bind=True)
def on_disk_here(self: Any, key: str, seconds: float) -> dict[str, Any]:
    """A limit per machine (``disk:<its hostname>``), recording where it ran."""
    return record(key, seconds, host=socket.gethostname(), task=self.request.id)


@app.task(pool="prefork", gpu_slots=1)
def on_gpu_slow_once(key: str, seconds: float) -> dict[str, Any]:
    """Takes ``seconds`` on its first attempt and returns at once when redelivered."""
    first = app.redis.llen(f"{key}:started") == 0
    return record(key, seconds if first else 0.0)


class RecordsHoldersAfterReturn(app.Task):  # type: ignore[name-defined,misc]
    """Runs ``after_return`` in the pool process, after the result was stored and before the
    worker's main process hears of the end: records who holds the task's GPU slot then."""

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        from taskpool.stores.semaphores import holders_of

        holders = [h.task_id for h in holders_of(app.redis, f"gpu:{os.uname().nodename}", keyspace="lim")]
        push(f"{args[0]}:holders_after_return", json.dumps({"task": task_id, "holders": holders}))


@app.task(pool="prefork", gpu_slots=1, base=RecordsHoldersAfterReturn)
def on_gpu_then_check(key: str, seconds: float) -> dict[str, Any]:
    return record(key, seconds)


@app.task(pool="threads", limits={"license:test": 1})
def licensed(key: str, seconds: float) -> dict[str, Any]:
    return record(key, seconds)
