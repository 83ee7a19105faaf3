"""Dynamically batched tasks: callers send single inputs, the function gets lists.

    @app.task(pool="prefork", batch=Batch(max_size=32, wait_ms=100))
    def embed(texts: list[str]) -> list[list[float]]: ...

    embed.delay("hello").get()          # one input in, its own result out

How it plugs into Celery (public hooks, like the admission gate):

* In the worker's main process, the task's ``Strategy`` (:mod:`taskpool.worker.strategy`)
  builds Celery's default strategy over a view of the consumer whose ``on_task_request`` hands
  each request to a :class:`Batcher` instead of the pool (the consumer bootstep
  :class:`~taskpool.worker.batching.BatchingStep` keeps the batchers). The batcher keeps the
  requests (their messages stay unacked) and flushes when ``max_size`` have arrived or
  ``wait_ms`` after the first one. While it collects, it lends the consumer one prefetch slot
  per buffered request (up to ``max_size`` per pool process), so a batch can fill although
  ``worker_prefetch_multiplier`` is 1; the loan ends when the request is acked.
* A flush makes one :class:`BatchRequest`: one pool job. Tasks with limits or GPU slots pass
  the admission gate as that one job, so a batch takes its slots once, and the leased GPU
  travels with it.
* In the pool, :func:`~taskpool.runtime.batch.run_batch` calls the function once with one
  list per parameter, then runs every input through Celery's own tracer (the same call the
  pool makes for a single task) with that input's outcome: each caller gets its own result,
  state, signals, events, chain and callbacks, and a failed input retries under the task's
  policy and ends in a dead letter on its own.
* Back in the main process each input's Celery request handles its outcome exactly as for a
  plain task: late ack after it ran, ``task_reject_on_worker_lost`` requeue when the pool
  process dies mid-batch (nothing is lost), Flower's events, ``inspect active``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from celery.exceptions import TaskRevokedError

from taskpool.core.batch import Batch
from taskpool.core.errors import BatchError
from taskpool.runtime.batch import run_batch
from taskpool.worker import state

logger = logging.getLogger("taskpool.batching")


# -- in the worker's main process -----------------------------------------------------------
_batch_ids = itertools.count(1)


class BatchRequest:
    """One batch as one pool job; passes the admission gate like a request.

    Its members are Celery's own requests of the inputs; every callback goes to each of them.
    """

    def __init__(self, batcher: Batcher, members: list[Any]) -> None:
        self.batcher = batcher
        self.members = members
        self.task = batcher.task
        self.name = batcher.task.name
        self.id = f"batch-{os.getpid()}-{next(_batch_ids)}"
        self.request_dict: dict[str, Any] = {}  # the gate puts the leases and GPUs here
        self.message = None
        self.accepted = False  # a pool process took it: its members are Celery's active requests

    def __repr__(self) -> str:
        return f"<BatchRequest {self.name}[{self.id}] of {len(self.members)}>"

    def revoked(self) -> bool:
        """Drop revoked inputs (Celery acks and records them); ``True`` if none is left."""
        alive = []
        for member in self.members:
            if member.revoked():
                self.batcher.done(member)
            else:
                alive.append(member)
        self.members = alive
        return not alive

    def execute_using_pool(self, pool: Any, **_: Any) -> Any:
        if self.revoked():
            raise TaskRevokedError(self.id)
        app = self.task.app
        from celery.app.trace import fast_trace_task, trace_task_ret

        trace = fast_trace_task if app.use_fast_trace_task else trace_task_ret
        items = [
            (m.type, m.task_id, m.request_dict, m.body, m.content_type, m.content_encoding)
            for m in self.members
        ]
        gpus, leases = state.granted_of(self)
        return self.batcher.apply_async(
            run_batch,
            args=(trace, self.name, items, gpus, leases),
            accept_callback=self.on_accepted,
            timeout_callback=self.on_timeout,
            callback=self.on_success,
            error_callback=self.on_failure,
            soft_timeout=self.task.soft_time_limit,
            timeout=self.task.time_limit,
            correlation_id=self.id,
        )

    def on_accepted(self, pid: Any, time_accepted: float) -> None:
        self.accepted = True
        for member in self.members:
            member.on_accepted(pid, time_accepted)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        for member in self.members:
            member.on_timeout(soft, timeout)

    def on_success(self, results: Any, **kwargs: Any) -> None:
        try:
            if not isinstance(results, list) or len(results) != len(self.members):
                raise BatchError(f"batch {self.id} of {self.name!r}: the pool returned {results!r:.200}")
            for member, result in zip(self.members, results, strict=True):
                try:
                    member.on_success(result, **kwargs)
                except Exception:
                    logger.exception("taskpool: %s[%s]: completion failed", member.name, member.id)
        finally:
            self._done()

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        """The pool job failed as a whole (a killed process, a time limit): each input handles it
        as Celery would for itself, e.g. back on the queue when its worker was lost."""
        try:
            for member in self.members:
                try:
                    member.on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
                except Exception:
                    logger.exception("taskpool: %s[%s]: failure handling failed", member.name, member.id)
        finally:
            self._done()

    def _done(self) -> None:
        self.batcher.finished(self)
        for member in self.members:
            self.batcher.done(member)


class Batcher:
    """Collects one batched task's requests in a worker's main process (see the module doc)."""

    def __init__(
        self, task: Any, consumer: Any, apply_async: Callable[..., Any], dispatch: Callable[[Any], Any]
    ):
        self.task = task
        self.consumer = consumer
        self.apply_async = apply_async
        self.dispatch = dispatch
        self.batch: Batch = task.taskpool.batch
        self.buffer: list[Any] = []
        self.lent = 0
        processes = getattr(consumer.pool, "num_processes", None) or getattr(consumer.pool, "limit", 1) or 1
        self.max_lent = self.batch.max_size * max(1, int(processes))
        self._timer_entry: Any = None
        self._lock = threading.RLock()
        self.running: set[BatchRequest] = set()  # flushed, not finished (waiting, queued or running)
        self.stats = {"batches": 0, "inputs": 0, "largest": 0}

    # Celery's strategy hands requests here instead of to the pool.
    def add(self, request: Any) -> None:
        with self._lock:
            self.buffer.append(request)
            if self.lent < self.max_lent:
                self.lent += 1
                state.set_batch_lent(request, True)
                self.consumer.qos.increment_eventually()
            full = len(self.buffer) >= self.batch.max_size
            if not full and len(self.buffer) == 1:
                self._timer_entry = self.consumer.timer.call_after(
                    self.batch.wait_ms / 1000.0, self._on_timer
                )
        if full:
            self.flush()

    def add_eta(self, request: Any) -> None:
        """An ETA/countdown request whose time has come (Celery's ``apply_eta_task``)."""
        from celery.worker.state import task_reserved

        task_reserved(request)
        self.add(request)
        self.consumer.qos.decrement_eventually()  # Celery lent a prefetch slot while it waited

    def _on_timer(self) -> None:
        with self._lock:
            self._timer_entry = None  # firing now: not to be cancelled (on gevent that kills this greenlet)
        self.flush()

    def flush(self) -> None:
        with self._lock:
            members, self.buffer = self.buffer, []
            entry, self._timer_entry = self._timer_entry, None
        if entry is not None:
            with contextlib.suppress(Exception):  # an entry that already fired
                entry.cancel()
        if not members:
            return
        batch = BatchRequest(self, members)
        if batch.revoked():
            return
        with self._lock:
            self.running.add(batch)
        self.stats["batches"] += 1
        self.stats["inputs"] += len(batch.members)
        self.stats["largest"] = max(self.stats["largest"], len(batch.members))
        try:
            self.dispatch(batch)
        except TaskRevokedError:
            pass
        except Exception:
            logger.exception("taskpool: could not start %r; its inputs go back to the queue", batch)
            self.finished(batch)
            for member in batch.members:
                member.reject(requeue=True)
                self.done(member)

    def finished(self, batch: BatchRequest) -> None:
        with self._lock:
            self.running.discard(batch)

    def done(self, request: Any) -> None:
        """A member left the worker (acked, rejected, revoked): end its prefetch loan."""
        if state.batch_lent(request):
            state.set_batch_lent(request, False)
            with self._lock:
                self.lent -= 1
            self.consumer.qos.decrement_eventually()

    def buffered(self) -> int:
        with self._lock:
            return len(self.buffer)

    def discount(self, incoming: int = 0) -> tuple[int, int]:
        """Inputs beyond one per batch, among Celery's active and its other reserved requests
        (``incoming``: requests reserved but not handed to the batcher yet)."""
        with self._lock:
            n = len(self.buffer) + incoming
            reserved = n - math.ceil(n / self.batch.max_size)
            active = 0
            for batch in self.running:
                extra = max(0, len(batch.members) - 1)
                if batch.accepted:
                    active += extra
                else:
                    reserved += extra
        return active, reserved

    def connection_lost(self) -> list[Any]:
        """Forget the buffered requests and return them: their channel closed, so their messages
        go back on the queue (kombu at the close, or by tag at the reconnect)."""
        with self._lock:
            dropped, self.buffer = self.buffer, []
            entry, self._timer_entry = self._timer_entry, None
            self.lent = 0  # lent on the old channel's QoS; the new connection has its own
        if entry is not None:
            with contextlib.suppress(Exception):
                entry.cancel()
        for request in dropped:
            state.set_batch_lent(request, False)
        return dropped

    def info(self) -> dict[str, Any]:
        return {
            "max_size": self.batch.max_size,
            "wait_ms": self.batch.wait_ms,
            "buffered": self.buffered(),
            **self.stats,
        }


def members_of(request: Any) -> Iterator[Any]:
    """The Celery requests behind ``request``: a batch's members, or the request itself."""
    yield from getattr(request, "members", None) or [request]
