"""Tasks that make every panel of the Grafana dashboard show something: a limit with waiters,
GPU slots with waiters, retries and a dead letter (tests/integration/test_monitoring.py).
Queues and keys of its own (prefix ``mon.``)."""

from __future__ import annotations

import time

from taskpool import TaskPool
from taskpool.core.settings import Settings

app = TaskPool(
    "monitoring", config=False, settings=Settings.from_env(base={"queue_prefix": "mon.", "keyspace": "mon"})
)


@app.task(pool="threads", limits={"mon-api": 1})
def limited(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(pool="prefork", gpu_slots=1)
def on_gpu(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(pool="threads", retries=1, backoff=0.1, jitter=False)
def always_fails() -> None:
    raise RuntimeError("always fails (monitoring test)")
