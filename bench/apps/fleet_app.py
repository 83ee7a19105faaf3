"""The app of bench/fleet_bench.py's workers: one sleeping task on the threads pool that records
where and when it started (the list ``fleetbench:started``)."""

from __future__ import annotations

import json
import time

from celery import current_task

from taskpool import TaskPool
from taskpool.core.settings import Settings

KEYSPACE = "fleetbench"
STARTED = f"{KEYSPACE}:started"

app = TaskPool(
    "fleet_bench", config=False, settings=Settings.from_env(queue_prefix="fleetbench.", keyspace=KEYSPACE)
)


@app.task(pool="threads")
def nap(seconds: float) -> float:
    app.redis.rpush(STARTED, json.dumps({"node": current_task.request.hostname, "at": time.time()}))
    time.sleep(seconds)
    return seconds
