"""The taskpool side of bench/admission_bench.py: a ``gpu_slots=1`` task that sleeps and records.

``config=False``: the broker comes from ``TASKPOOL_BROKER_URL`` at import; the worker gets
``TASKPOOL_GPUS=2`` (two virtual GPU slots on a CPU machine). Each run appends
``{"start", "end", "pid", "gpus"}`` (wall-clock seconds) to the Redis list named by ``key``, so the
bench measures the makespan from the tasks' own records.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from taskpool import TaskPool, current_gpus

app = TaskPool("bench_admission", config=False)


@app.task(pool="prefork", gpu_slots=1)
def gpu_job(key: str, seconds: float) -> dict[str, Any]:
    start = time.time()
    time.sleep(seconds)
    entry = {"start": start, "end": time.time(), "pid": os.getpid(), "gpus": current_gpus()}
    app.redis.rpush(key, json.dumps(entry))
    return entry
