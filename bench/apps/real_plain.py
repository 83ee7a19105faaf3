"""Plain Celery with **its own defaults**: the base of bench/throughput.py.

Only the broker and the result backend are set (``BENCH_BROKER_URL``); everything else (early
acks, prefetch multiplier 4, kombu's 10 connections per worker, ...) is what ``celery.Celery()``
gives a user who configures nothing. The pipeline's steps are routed by hand to one queue per pool, as a
Celery user would do it; the other tasks use Celery's default queue.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from bench.apps.plain_conf import broker_url
from bench.apps.work import busy

app = Celery("real_plain", broker=broker_url(), backend=broker_url())
# bench/throughput.py --events: task-sent events too (the workers get -E), as taskpool's side.
app.conf.task_send_sent_event = os.environ.get("BENCH_TASK_SEND_SENT_EVENT") == "1"
app.conf.task_routes = {
    "bench.apps.real_plain.download": {"queue": "real.gevent"},
    "bench.apps.real_plain.model": {"queue": "real.prefork"},
    "bench.apps.real_plain.save": {"queue": "real.threads"},
}


@app.task
def noop() -> None:
    return None


@app.task
def io(seconds: float = 0.1) -> None:
    time.sleep(seconds)  # cooperative on -P gevent (monkey-patched)


@app.task
def cpu(seconds: float = 0.05) -> None:
    busy(seconds)


# -- the pipeline: download (I/O) -> model (CPU) -> save (I/O); async def is not possible here
@app.task
def download(event: int) -> dict:
    time.sleep(0.1)
    return {"event": event}


@app.task
def model(item: dict) -> dict:
    busy(0.05)
    return {**item, "score": 1}


@app.task
def save(item: dict) -> int:
    time.sleep(0.1)
    return int(item["event"])
