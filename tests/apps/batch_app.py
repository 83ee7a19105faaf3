"""Batched tasks, on queues and keys of their own (prefix ``bat.``).

Every call of a batched function records its size and its inputs in Redis, so tests check
how batches formed and that each input ran, from records.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from taskpool import TaskPool, current_gpus
from taskpool.core.batch import Batch
from taskpool.core.settings import Settings

app = TaskPool(
    "batches", config=False, settings=Settings.from_env(base={"queue_prefix": "bat.", "keyspace": "bat"})
)


def record(name: str, inputs: list[Any], **extra: Any) -> None:
    entry = {"pid": os.getpid(), "size": len(inputs), "inputs": inputs, "at": time.time(), **extra}
    app.redis.rpush(f"calls:{name}", json.dumps(entry))


@app.task(pool="threads", batch=Batch(max_size=8, wait_ms=2000))
def double(xs: list[int]) -> list[int]:
    """Fills by size: 8 inputs arrive well within 2 s."""
    record("double", xs)
    return [2 * x for x in xs]


@app.task(pool="threads", batch=Batch(max_size=50, wait_ms=300))
def scaled(xs: list[int], factor: list[int], *, offset: list[int]) -> list[int]:
    """Fills by time: fewer than 50 inputs, flushed 300 ms after the first. Several parameters."""
    record("scaled", xs)
    return [x * f + o for x, f, o in zip(xs, factor, offset, strict=True)]


@app.task(pool="threads", retries=2, backoff=0.05, backoff_max=0.1, batch=Batch(max_size=4, wait_ms=300))
def checked(xs: list[int]) -> list[Any]:
    """Negative inputs fail on their own (an exception in their place); others succeed."""
    record("checked", xs)
    return [ValueError(f"negative input {x}") if x < 0 else x + 1 for x in xs]


@app.task(
    pool="threads",
    retries=3,
    backoff=0.05,
    backoff_max=0.1,
    retry_on=(ConnectionError,),
    batch=Batch(max_size=4, wait_ms=300),
)
def flaky(xs: list[int]) -> list[int]:
    """The whole call raises the first two times it runs: every input retries on its own."""
    calls = app.redis.incr("flaky:calls")
    record("flaky", xs, call=calls)
    if calls <= 2:
        raise ConnectionError(f"call {calls}: model server unreachable")
    return [x * 10 for x in xs]


@app.task(pool="threads", retries=3, backoff=0.05, backoff_max=0.1, batch=Batch(max_size=4, wait_ms=300))
def short(xs: list[int]) -> list[int]:
    """Breaks the contract: one result too few. Never retried."""
    record("short", xs)
    return xs[:-1]


@app.task(pool="prefork", batch=Batch(max_size=4, wait_ms=500))
def slow_square(xs: list[int]) -> list[int]:
    """Takes its time, so a test can kill the pool process mid-batch."""
    app.redis.rpush("slow_square:started", os.getpid())
    record("slow_square", xs)
    time.sleep(float(app.redis.get("slow_square:seconds") or 0))
    for x in xs:
        app.redis.hincrby("slow_square:ran", str(x), 1)
    return [x * x for x in xs]


@app.task(pool="threads", gpu_slots=1, batch=Batch(max_size=4, wait_ms=300))
def on_gpu(xs: list[int]) -> list[Any]:
    """Holds one GPU slot per batch; every input learns the batch's GPU."""
    gpus = current_gpus()
    record("on_gpu", xs, gpus=gpus)
    time.sleep(0.2)
    return [{"x": x, "gpus": gpus} for x in xs]


@app.task(pool="gevent", batch=Batch(max_size=5, wait_ms=200))
async def echo_async(xs: list[str]) -> list[str]:
    """An async batched function on gevent."""
    await asyncio.sleep(0.01)
    record("echo_async", xs)
    return [x.upper() for x in xs]


@app.task(pool="threads", batch=Batch(max_size=8, wait_ms=5000))
def slow_batch(xs: list[int]) -> list[int]:
    """Eight inputs, one call of a second: one pool slot's worth of work."""
    record("slow_batch", xs)
    time.sleep(1.0)
    return xs


@app.task(pool="threads")
def describe(value: Any) -> str:
    """A plain task after a batched one in a chain."""
    return f"value={value}"
