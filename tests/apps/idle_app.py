"""Tasks on queues no session worker consumes (prefix ``idle.``): what a user sees when a pool
has no worker, and the CLI's dead-letter commands."""

from __future__ import annotations

import time

from taskpool import TaskPool
from taskpool.core.settings import Settings

app = TaskPool(
    "idle", config=False, settings=Settings.from_env(base={"queue_prefix": "idle.", "keyspace": "idle"})
)


@app.task(pool="threads", name="idle.nap")
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
