"""The taskpool side of bench/hosts_bench.py: a ``gpu_slots=1`` task that sleeps and records
the host it ran on (each simulated host is a worker in a UTS namespace of its own).

``config=False``: the broker comes from ``TASKPOOL_BROKER_URL`` at import. Each run appends
``{"host", "start", "end", "task"}`` (wall-clock seconds) to the Redis list named by ``key``.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from taskpool import TaskPool

app = TaskPool("bench_hosts", config=False)


@app.task(pool="prefork", gpu_slots=1, bind=True)
def gpu_job(self: Any, key: str, seconds: float) -> dict[str, Any]:
    start = time.time()
    time.sleep(seconds)
    entry = {"host": socket.gethostname(), "start": start, "end": time.time(), "task": self.request.id}
    app.redis.rpush(key, json.dumps(entry))
    return entry
