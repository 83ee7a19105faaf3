"""The plain Celery side of bench/hosts_bench.py: the same task, no GPU slots.

Plain Celery has no slot per host: the way to give each GPU one task at a time is one ``-c 1``
worker per GPU host. The app has Celery's own defaults (early acks, prefetch multiplier 4), as
a user who configures nothing gets them; only the broker and the backend are set. It never
imports taskpool.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import redis
from celery import Celery

from bench.apps.plain_conf import broker_url

app = Celery("bench_hosts_plain", broker=broker_url(), backend=broker_url())
app.conf.task_default_queue = "bench.hosts.plain"

_client: tuple[int, redis.Redis] | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None or _client[0] != os.getpid():  # one client per (forked) process
        _client = (os.getpid(), redis.Redis.from_url(broker_url()))
    return _client[1]


@app.task(bind=True)
def gpu_job(self: Any, key: str, seconds: float) -> dict[str, Any]:
    start = time.time()
    time.sleep(seconds)
    entry = {"host": socket.gethostname(), "start": start, "end": time.time(), "task": self.request.id}
    _redis().rpush(key, json.dumps(entry))
    return entry
