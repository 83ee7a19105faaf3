"""``task.map`` and ``task.starmap``: the options checked at the call, then :class:`MapRun`
sends the inputs in chunks as the caller takes results, at most ``map_max_outstanding`` ahead."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from celery import states
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult, assert_will_not_block

from taskpool.client.fanout.checks import (
    CallArgs,
    check_call,
    check_flag,
    check_kwargs,
    check_results_kept,
    check_timeout,
    iterate,
)
from taskpool.client.fanout.sending import PUBLISH_CHUNK, no_consumer_hint, publish_chunk, revoke
from taskpool.client.fanout.waiting import Watcher

if TYPE_CHECKING:
    from taskpool.client.app import TaskPool
    from taskpool.client.task import TaskpoolTask


def map_items(
    task: TaskpoolTask,
    items: Iterable[Any],
    *,
    kwargs: dict[str, Any] | None = None,
    order_outputs: bool = True,
    return_exceptions: bool = False,
    timeout: float | None = None,
) -> Iterator[Any]:
    """``task.map``: call ``task(item, **kwargs)`` for each item; yields the results.

    Like :func:`map_calls`, with ``items`` and ``kwargs`` checked first (a non-iterable, a
    string or a dict as ``items`` raise ``TypeError`` naming the task).
    """
    extra = check_kwargs(task, kwargs)
    inputs = iterate(task, "items", items)
    return map_calls(
        task,
        (((item,), extra) for item in inputs),
        order_outputs=order_outputs,
        return_exceptions=return_exceptions,
        timeout=timeout,
    )


def starmap_items(
    task: TaskpoolTask,
    arg_tuples: Iterable[Any],
    *,
    kwargs: dict[str, Any] | None = None,
    order_outputs: bool = True,
    return_exceptions: bool = False,
    timeout: float | None = None,
) -> Iterator[Any]:
    """``task.starmap``: call ``task(*args, **kwargs)`` for each tuple; yields the results.

    Each element must be a tuple or a list (a string would otherwise be spread into
    characters); anything else raises ``TypeError`` naming the task and the input's position.
    """
    extra = check_kwargs(task, kwargs)
    inputs = iterate(task, "arg_tuples", arg_tuples)
    return map_calls(
        task,
        ((args, extra) for args in inputs),
        order_outputs=order_outputs,
        return_exceptions=return_exceptions,
        timeout=timeout,
    )


def map_calls(
    task: TaskpoolTask,
    calls: Iterable[CallArgs],
    *,
    order_outputs: bool = True,
    return_exceptions: bool = False,
    timeout: float | None = None,
) -> Iterator[Any]:
    """Run ``task(*args, **kwargs)`` for each ``(args, kwargs)`` of ``calls``; yields the results.

    The options are checked at once; the inputs are read, sent and collected as the caller
    iterates (nothing is sent before the first ``next()``).

    Args:
        task: the task to call.
        calls: ``(args, kwargs)`` pairs, read lazily, at most ``map_max_outstanding`` ahead of
            what the caller has taken.
        order_outputs: yield in input order (default); ``False``: as the results come.
        return_exceptions: yield a failed input's exception in its place instead of raising it.
        timeout: seconds for the whole map (from the first ``next()``), None for no limit.

    Raises:
        ConfigurationError: a bad option, or the task keeps no results (at the call).
        RuntimeError: called inside a task (Celery's ``assert_will_not_block``).
        TypeError: a malformed call (while iterating).
        QueueFull: the task's queue is at ``max_queue_length`` (while iterating).
        celery.exceptions.TimeoutError: ``timeout`` passed (while iterating).
        Exception: with ``return_exceptions=False``, the first failed input's exception as
            rebuilt from the result backend.
    """
    ordered = check_flag(task, "order_outputs", order_outputs)
    keep_exceptions = check_flag(task, "return_exceptions", return_exceptions)
    seconds = check_timeout(task, timeout)
    assert_will_not_block()
    source = iter(calls)
    if task.app.conf.task_always_eager:
        return run_eager(task, source, keep_exceptions, seconds)
    check_results_kept(task)
    return MapRun(task, source, ordered, keep_exceptions, seconds, timeout).run()


def outcome(result: AsyncResult, return_exceptions: bool) -> Any:
    """The value of a finished result: its return value, else its exception (raised, or given
    back with ``return_exceptions``)."""
    if return_exceptions:
        value = result.get(propagate=False)
        if result.state in states.PROPAGATE_STATES and not isinstance(value, BaseException):
            return Exception(value)
        return value
    return result.get(propagate=True)


def run_eager(
    task: TaskpoolTask, source: Iterator[Any], return_exceptions: bool, timeout: float | None
) -> Iterator[Any]:
    """Eager mode: each input runs in-process when the caller asks for it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for index, call in enumerate(source):
        if deadline is not None and time.monotonic() > deadline:
            raise CeleryTimeoutError(
                f"task {task.name!r}: map timed out after {timeout} s (eager, before input #{index})"
            )
        args, kwargs = check_call(task, index, call)
        yield outcome(task.apply_async(args, kwargs), return_exceptions)


class MapRun:
    """One ``map``: submits in chunks, keeps at most ``map_max_outstanding`` ahead, yields."""

    def __init__(
        self,
        task: TaskpoolTask,
        source: Iterator[Any],
        ordered: bool,
        return_exceptions: bool,
        timeout: float | None,
        given_timeout: Any,
    ) -> None:
        self.task = task
        self.source = source
        self.ordered = ordered
        self.return_exceptions = return_exceptions
        self.timeout = timeout
        self.given_timeout = given_timeout
        app: TaskPool = task.app
        self.limit = app.settings.map_max_outstanding
        self.top_up_at = max(1, self.limit // 10)
        self.watcher = Watcher(task.backend)
        self.outstanding: dict[int, AsyncResult] = {}  # input index -> result, not yet yielded
        self.index_of: dict[str, int] = {}  # task id -> input index, while outstanding
        self.done: set[int] = set()  # outstanding inputs that finished
        self.arrivals: deque[int] = deque()  # finished inputs in finishing order (unordered mode)
        self.submitted = 0
        self.next_out = 0  # ordered mode: the input to yield next
        self.exhausted = False
        self.failure_seen = False

    def run(self) -> Iterator[Any]:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        finished_normally = False
        try:
            while True:
                self._collect()
                index = self._next_ready()
                if index is not None:
                    result = self.outstanding.pop(index)
                    self.done.discard(index)
                    del self.index_of[result.id]
                    self.next_out = index + 1
                    yield outcome(result, self.return_exceptions)
                    continue
                if not self.outstanding and (self.exhausted or self.failure_seen):
                    finished_normally = True
                    return
                self._top_up()
                if not self.outstanding:
                    finished_normally = True
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._collect()
                    if self._next_ready() is None:
                        raise self._timed_out()
                    continue
                self.watcher.wait(remaining)
        finally:
            if not finished_normally:
                self._abandon()

    # -- steps --------------------------------------------------------------------------------
    def _collect(self) -> None:
        finished = self.watcher.finished
        while finished:
            index = self.index_of.get(finished.popleft())
            if index is None or index in self.done:
                continue
            self.done.add(index)
            if not self.ordered:
                self.arrivals.append(index)
            if not self.return_exceptions and self.outstanding[index].state in states.PROPAGATE_STATES:
                self.failure_seen = True  # send no more: they would be revoked at the raise

    def _next_ready(self) -> int | None:
        if self.ordered:
            return self.next_out if self.next_out in self.done else None
        return self.arrivals.popleft() if self.arrivals else None

    def _top_up(self) -> None:
        if self.exhausted or self.failure_seen:
            return
        free = self.limit - len(self.outstanding)
        unfinished = len(self.outstanding) - len(self.done)
        if free <= 0 or (free < self.top_up_at and unfinished > 0):
            return
        while free > 0 and not self.exhausted:
            want = min(free, PUBLISH_CHUNK)
            chunk = [
                check_call(self.task, self.submitted + i, call)
                for i, call in enumerate(itertools.islice(self.source, want))
            ]
            if len(chunk) < want:
                self.exhausted = True
            if not chunk:
                return
            for result in publish_chunk(self.task, chunk):
                index = self.submitted
                self.submitted += 1
                self.outstanding[index] = result
                self.index_of[result.id] = index
                self.watcher.watch(result)
            free -= len(chunk)

    def _timed_out(self) -> CeleryTimeoutError:
        unfinished = len(self.outstanding) - len(self.done)
        hint = no_consumer_hint(self.task)
        return CeleryTimeoutError(
            f"task {self.task.name!r}: map timed out after {self.given_timeout} s with "
            f"{len(self.outstanding)} result(s) outstanding ({unfinished} unfinished, revoked); "
            f"{self.submitted - len(self.outstanding)} of {self.submitted} sent were returned"
            + (f"; {hint}" if hint else "")
        )

    def _abandon(self) -> None:
        """The map stops early (an error, a timeout, the caller closed it): revoke what has not
        finished and let go of every result."""
        self._collect()
        unfinished = [r.id for i, r in self.outstanding.items() if i not in self.done]
        revoke(self.task, unfinished)
        for result in self.outstanding.values():
            self.watcher.forget(result)
        self.outstanding.clear()
        self.index_of.clear()
