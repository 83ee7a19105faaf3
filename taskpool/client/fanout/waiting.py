"""Waiting for the results a map sent: which finished, in the order they finished."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from celery.result import AsyncResult
from vine import promise

from taskpool.compat.celery import drain_results_until

#: Seconds between polls of a result backend without the async API (database, filesystem...).
POLL_INTERVAL = 0.1


class Watcher:
    """Which of the watched results finished, in the order they finished."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.is_async = bool(getattr(backend, "is_async", False))
        self.finished: deque[str] = deque()
        self._polled: dict[str, AsyncResult] = {}
        self._wake: promise | None = None

    def watch(self, result: AsyncResult) -> None:
        if self.is_async:
            result.then(self._on_ready)
        else:
            self._polled[result.id] = result

    def forget(self, result: AsyncResult) -> None:
        """Stop watching (the map is over): no pending entry or subscription is left behind."""
        self._polled.pop(result.id, None)
        if self.is_async:
            self.backend.remove_pending_result(result)

    def _on_ready(self, result: AsyncResult) -> None:
        # Called by Celery while it drains the result channel: record only (no references to
        # results are kept here, so no reference cycle through their promises).
        self.finished.append(result.id)
        wake = self._wake
        if wake is not None and not wake.ready:
            wake()

    def wait(self, timeout: float | None) -> None:
        """Until one more result finished, or ``timeout`` seconds passed (None: no limit)."""
        if self.finished:
            return
        if not self.is_async:
            self._poll(timeout)
            return
        woken = self._wake = promise()
        try:
            interval = 1.0 if timeout is None else max(0.001, min(1.0, timeout))
            for _ in drain_results_until(self.backend, woken, timeout, interval):
                pass
        except TimeoutError:  # socket.timeout: the drainer's deadline
            pass
        finally:
            self._wake = None

    def _poll(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._polled and not self.finished:
            nap = POLL_INTERVAL if deadline is None else min(POLL_INTERVAL, deadline - time.monotonic())
            get_many = getattr(self.backend, "get_many", None)
            if get_many is not None:
                ready = [
                    task_id
                    for task_id, _ in get_many(list(self._polled), interval=max(nap, 0), max_iterations=1)
                ]
            else:
                ready = [task_id for task_id, result in self._polled.items() if result.ready()]
                if not ready and nap > 0:
                    time.sleep(nap)
            for task_id in ready:
                if self._polled.pop(task_id, None) is not None:
                    self.finished.append(task_id)
            if deadline is not None and time.monotonic() >= deadline:
                return
