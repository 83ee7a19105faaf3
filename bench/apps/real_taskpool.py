"""taskpool with its own defaults: the other side of bench/throughput.py.

Each workload has one task per pool (a worker consumes its pool's queue). ``*_gated`` tasks
declare ``max_in_flight`` equal to the pool size the bench runs them at, so they show what the
admission gate costs when it never has to hold anything back.
"""

from __future__ import annotations

import asyncio
import time

from bench.apps.work import busy
from taskpool import TaskPool

app = TaskPool("real_taskpool", config=False)

#: Concurrency the bench runs each workload at (the gated tasks' max_in_flight).
GEVENT_IO_C = 20
THREADS_C = 8
PREFORK_C = 2
PIPE_GEVENT_C = 8


@app.task(pool="prefork")
def noop_prefork() -> None:
    return None


@app.task(pool="threads")
def noop_threads() -> None:
    return None


@app.task(pool="gevent")
def noop_gevent() -> None:
    return None


@app.task(pool="gevent")
def io_gevent(seconds: float = 0.1) -> None:
    time.sleep(seconds)


@app.task(pool="gevent")
async def aio_gevent(seconds: float = 0.1) -> None:
    await asyncio.sleep(seconds)


@app.task(pool="gevent", max_in_flight=GEVENT_IO_C)
def io_gevent_gated(seconds: float = 0.1) -> None:
    time.sleep(seconds)


@app.task(pool="gevent", max_in_flight=GEVENT_IO_C)
async def aio_gevent_gated(seconds: float = 0.1) -> None:
    await asyncio.sleep(seconds)


@app.task(pool="threads")
def io_threads(seconds: float = 0.1) -> None:
    time.sleep(seconds)


@app.task(pool="threads", max_in_flight=THREADS_C)
def io_threads_gated(seconds: float = 0.1) -> None:
    time.sleep(seconds)


@app.task(pool="prefork")
def cpu_prefork(seconds: float = 0.05) -> None:
    busy(seconds)


@app.task(pool="prefork", max_in_flight=PREFORK_C)
def cpu_prefork_gated(seconds: float = 0.05) -> None:
    busy(seconds)


# -- the pipeline: an async step on gevent, a CPU step on prefork, a blocking step on threads
@app.task(pool="gevent")
async def download(event: int) -> dict:
    await asyncio.sleep(0.1)
    return {"event": event}


@app.task(pool="prefork")
def model(item: dict) -> dict:
    busy(0.05)
    return {**item, "score": 1}


@app.task(pool="threads")
def save(item: dict) -> int:
    time.sleep(0.1)
    return int(item["event"])


@app.task(pool="gevent", max_in_flight=PIPE_GEVENT_C)
async def download_gated(event: int) -> dict:
    await asyncio.sleep(0.1)
    return {"event": event}


@app.task(pool="prefork", max_in_flight=PREFORK_C)
def model_gated(item: dict) -> dict:
    busy(0.05)
    return {**item, "score": 1}


@app.task(pool="threads", max_in_flight=THREADS_C)
def save_gated(item: dict) -> int:
    time.sleep(0.1)
    return int(item["event"])
