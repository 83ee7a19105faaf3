"""Run ``async def`` task functions on every pool, on a long-lived event loop.

Celery calls a task function and would return an unawaited coroutine, so taskpool
drives the coroutine itself:

* prefork and threads: one event loop per process or per thread, created on first use
  and kept, so an async client made by one task is reused by the next (a new loop per
  task would orphan it). A forked child starts with none of its parent's loops.
* gevent: asyncio allows one running loop per OS thread and every greenlet shares the
  thread, so a single loop runs in its own greenlet and the task greenlets hand it their
  coroutines. gevent's monkey-patched selectors make that loop yield to the hub while it
  waits, and the task greenlet waits cooperatively on the result.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_local = threading.local()
_gevent_loop: asyncio.AbstractEventLoop | None = None


def _gevent_active() -> bool:
    if "gevent" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("threading"))


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on this worker's persistent loop and return its result."""
    if _gevent_active():
        return _run_on_gevent_loop(coro)
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop.run_until_complete(coro)


def _run_on_gevent_loop(coro: Coroutine[Any, Any, T]) -> T:
    global _gevent_loop
    # No lock: greenlets of one thread switch only where they block, and nothing here
    # blocks before the loop is published.
    loop = _gevent_loop
    if loop is None or loop.is_closed():
        import gevent

        loop = _gevent_loop = asyncio.new_event_loop()
        gevent.spawn(loop.run_forever)
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


def _forget_loops_in_child() -> None:
    global _gevent_loop
    _local.__dict__.clear()
    _gevent_loop = None


os.register_at_fork(after_in_child=_forget_loops_in_child)
