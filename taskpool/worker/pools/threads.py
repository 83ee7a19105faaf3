"""A threads pool that can grow and shrink: what ``-P threads`` workers run on.

Celery's ``celery.concurrency.thread:TaskPool`` wraps a ``ThreadPoolExecutor``, which cannot
lose threads and has no ``grow``. This pool keeps one queue of jobs and a set of threads:

* ``grow(n)`` starts ``n`` threads at once;
* ``shrink(n)`` retires only idle threads (never one running a task) and raises ``ValueError``
  when none is idle, as billiard's prefork pool does;
* ``limit`` is always the current size, so ``inspect stats`` (``pool.max-concurrency``) is live.

``configure_worker`` in :mod:`taskpool.autoscale` swaps it in for Celery's threads pool.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from celery.concurrency.base import BasePool, apply_target
from celery.concurrency.thread import ApplyResult

__all__ = ["TaskPool"]

_Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any], Any, Any]


class TaskPool(BasePool):
    """Thread pool with ``grow`` and idle-only ``shrink``.

    Attributes:
        taskpool_pool: the taskpool pool this class serves (read by
            :func:`taskpool.routing.pool_of_worker`).
    """

    taskpool_pool = "threads"
    body_can_be_buffer = True
    signal_safe = False
    limit: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit = int(self.limit or 1)
        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._threads: set[threading.Thread] = set()
        self._waiting = 0  # threads blocked waiting for a job
        self._retire = 0  # threads asked to exit at their next wait
        self._stopping = False
        self._names = itertools.count(1)

    # -- life cycle --------------------------------------------------------------------
    def on_start(self) -> None:
        with self._cond:
            self._stopping = False
            self._spawn(self.limit)

    def on_stop(self) -> None:
        """Warm stop: jobs not started are cancelled (their messages stay unacked); running ones finish."""
        for thread in self._stop():
            thread.join()

    def on_terminate(self) -> None:
        self._stop()  # threads cannot be killed; the process exits without waiting for them

    def _stop(self) -> list[threading.Thread]:
        with self._cond:
            self._stopping = True
            pending = list(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
            threads = [t for t in self._threads if t is not threading.current_thread()]
        for job in pending:
            job[0].cancel()
        return threads

    # -- work --------------------------------------------------------------------------
    def on_apply(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Any = None,
        accept_callback: Any = None,
        **_: Any,
    ) -> ApplyResult:
        future: Future[Any] = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("cannot schedule new jobs after the pool stopped")
            self._jobs.append(
                (future, target, tuple(args or ()), dict(kwargs or {}), callback, accept_callback)
            )
            self._cond.notify()
        return ApplyResult(future)

    def _spawn(self, n: int) -> None:
        for _ in range(n):
            thread = threading.Thread(
                target=self._work, name=f"taskpool-thread-{next(self._names)}", daemon=True
            )
            self._threads.add(thread)
            thread.start()

    def _work(self) -> None:
        me = threading.current_thread()
        cond = self._cond
        while True:
            with cond:
                while not self._jobs and not self._retire and not self._stopping:
                    self._waiting += 1
                    try:
                        cond.wait()
                    finally:
                        self._waiting -= 1
                if self._retire or (self._stopping and not self._jobs):
                    if self._retire:
                        self._retire -= 1
                    self._threads.discard(me)
                    if self._jobs:
                        cond.notify()  # the wake-up we consumed may have been meant for a job
                    return
                future, target, args, kwargs, callback, accept_callback = self._jobs.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = apply_target(target, args, kwargs, callback, accept_callback)
            except BaseException as exc:  # apply_target reports task errors itself; keep the thread
                future.set_exception(exc)
            else:
                future.set_result(result)

    # -- size --------------------------------------------------------------------------
    def grow(self, n: int = 1) -> None:
        """Add ``n`` threads now (cancelling pending retirements first)."""
        if n <= 0:
            return
        with self._cond:
            undo = min(n, self._retire)
            self._retire -= undo
            self.limit += n
            self._spawn(n - undo)

    def shrink(self, n: int = 1) -> int:
        """Retire up to ``n`` idle threads; returns how many.

        Raises:
            ValueError: when no thread is idle (nothing is ever interrupted).
        """
        with self._cond:
            k = min(n, self._idle_locked(), self.limit - 1)
            if k <= 0:
                raise ValueError("Can't shrink pool. All threads busy!")
            self._retire += k
            self.limit -= k
            self._cond.notify_all()
            return k

    @property
    def idle(self) -> int:
        """Threads free to take a job now (what :meth:`shrink` may retire)."""
        with self._cond:
            return self._idle_locked()

    def _idle_locked(self) -> int:
        return max(0, self._waiting - len(self._jobs) - self._retire)

    @property
    def num_processes(self) -> int:
        return self.limit

    def _get_info(self) -> dict[str, Any]:
        info = super()._get_info()
        with self._cond:
            info.update(
                {
                    "max-concurrency": self.limit,
                    "threads": len(self._threads),
                    "idle": self._idle_locked(),
                    "queued": len(self._jobs),
                }
            )
        return info
