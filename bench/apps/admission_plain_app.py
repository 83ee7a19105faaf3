"""The plain Celery side of bench/admission_bench.py: the same sleeping task, no limits.

Run on a prefork worker with ``-c 2``, the natural way to run two at a time. Settings are
taskpool's defaults written out (``plain_conf.py``); this module never imports taskpool.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

from bench.apps.plain_conf import broker_url, plain_celery

app = plain_celery("bench_admission_plain", "bench.admission.plain")

_client: tuple[int, redis.Redis] | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None or _client[0] != os.getpid():  # one client per (forked) process
        _client = (os.getpid(), redis.Redis.from_url(broker_url()))
    return _client[1]


@app.task
def plain_job(key: str, seconds: float) -> dict[str, Any]:
    start = time.time()
    time.sleep(seconds)
    entry = {"start": start, "end": time.time(), "pid": os.getpid(), "gpus": []}
    _redis().rpush(key, json.dumps(entry))
    return entry
