"""Celery internals taskpool relies on, in one place (read from Celery 5.7.0 as installed).

Each function names the private attribute or method it uses and where it lives in Celery's
source; tests/integration/test_compat_internals.py (and test_compat_autoscale.py for the
autoscaler's probes) check each still has the shape read here and fail naming the function to
update. This module imports nothing of taskpool, and nothing of Celery's worker at import time
(clients import it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from celery import _state as celery_state

logger = logging.getLogger("taskpool")

# == client and consumer internals: current_task, the Redis result consumer, the task handler ==


def repoint_current_task(target: Callable[[], Any]) -> bool:
    """Make ``celery.current_task`` read ``target()`` instead of Celery's task stack.

    Internal: ``celery.local.Proxy`` keeps the function it proxies in the name-mangled slot
    ``_Proxy__local`` (``__slots__ = ('__local', ...)``, celery/local.py, Celery 5.7.0);
    ``celery._state.current_task`` is such a proxy over ``get_current_task``. No public hook
    exists. The proxy is re-pointed only while it still points at ``get_current_task``.

    Returns:
        False when the slot is missing (Celery changed its ``Proxy``): nothing was changed.
    """
    proxy = celery_state.current_task
    try:
        current = object.__getattribute__(proxy, "_Proxy__local")
    except AttributeError:
        return False
    if current is celery_state.get_current_task:
        object.__setattr__(proxy, "_Proxy__local", target)
    return True


#: The ``ResultConsumer`` attributes :func:`subscribe_results` needs.
RESULT_CONSUMER_INTERNALS = ("_locked", "_pubsub", "subscribed_to", "start", "reconnect_on_error")


def subscribe_results(backend: Any, task_ids: list[str]) -> bool:
    """Subscribe Celery's Redis result consumer to the result channels of ``task_ids`` with one
    SUBSCRIBE command (Celery's ``consume_from`` sends one per task).

    Internals of ``celery.backends.redis.ResultConsumer`` (Celery 5.7.0): ``_locked()`` (the
    context manager every pubsub operation runs in), ``_pubsub`` (the redis-py ``PubSub``, None
    until ``start(task_id)`` makes it), ``subscribed_to`` (the channel keys; a reconnect
    subscribes them again), ``_pending_unsubscribe`` (keys a ``cancel_for`` queued; a key
    subscribed again must leave it, as ``_consume_from`` does) and ``reconnect_on_error()``.

    Returns:
        False when the backend's result consumer is not one with these attributes: nothing was
        done, and Celery subscribes per message as usual.
    """
    consumer: Any = getattr(backend, "result_consumer", None)
    if not all(hasattr(consumer, name) for name in RESULT_CONSUMER_INTERNALS):
        return False
    keys = [backend.get_key_for_task(task_id) for task_id in task_ids]
    with consumer._locked():
        if consumer._pubsub is None:
            consumer.start(task_ids[0])  # Celery's own first subscribe makes the pubsub connection
        new = [key for key in keys if key not in consumer.subscribed_to]
        if not new:
            return True
        pending = getattr(consumer, "_pending_unsubscribe", None)
        if pending is not None:
            pending.difference_update(new)
        consumer.subscribed_to.update(new)  # before the command: a reconnect re-subscribes these
        with consumer.reconnect_on_error():
            consumer._pubsub.subscribe(*new)
    return True


def drain_results_until(backend: Any, until: Any, timeout: float | None, interval: float) -> Iterator[Any]:
    """Drain the backend's result channel until the promise ``until`` is ready or ``timeout``
    seconds passed (then ``socket.timeout``), waking every ``interval`` seconds.

    Internal: ``backend.result_consumer.drainer`` (``celery.backends.asynchronous.Drainer``,
    chosen per environment: threads, eventlet or gevent) and its ``drain_events_until(p,
    timeout, interval)``, what ``AsyncResult.get`` waits with (Celery 5.7.0). The consumer's own
    ``drain_events_until`` does not take ``interval``.
    """
    drainer = backend.result_consumer.drainer
    return drainer.drain_events_until(until, timeout=timeout, interval=interval)


def wrap_task_handler(consumer: Any, wrap: Callable[[Callable[[Any], Any]], Callable[[Any], Any]]) -> bool:
    """Put ``wrap`` around every task-message handler the worker's consumer makes.

    Internal: ``Consumer.create_task_handler()`` (celery/worker/consumer/consumer.py, Celery
    5.7.0) builds the ``on_task_received(message)`` callback that Celery's event loops
    (``asynloop``, ``synloop``) consume task messages with; it is replaced on the instance by
    one returning ``wrap(handler)``. No public hook sees a message before Celery decodes it.

    Returns:
        False when the consumer has no ``create_task_handler`` or it is wrapped already.
    """
    original = getattr(consumer, "create_task_handler", None)
    if original is None or getattr(original, "taskpool_wrapped", False):
        return False

    def create_task_handler(*args: Any, **kwargs: Any) -> Any:
        return wrap(original(*args, **kwargs))

    create_task_handler.taskpool_wrapped = True  # type: ignore[attr-defined]
    consumer.create_task_handler = create_task_handler
    return True


def before_connection_loss(consumer: Any, mark: str, callback: Callable[[], None], what: str) -> bool:
    """Run ``callback()`` first whenever the worker's consumer handles the loss of a broker
    connection it had made, before Celery's own handling (``on_close`` then drops the requests it
    holds). Once per ``mark``: asked again for the same mark, nothing changes. An exception from
    ``callback`` is logged (``taskpool: <what>``) and Celery's handling goes on.

    Internal: ``Consumer.start`` (celery/worker/consumer/consumer.py, Celery 5.7.0) calls
    ``self.on_connection_error_after_connected(exc)`` on a connection error while connected, then
    ``on_close()``; it is replaced on the instance by one calling ``callback`` first.

    Returns:
        False when the consumer has no ``on_connection_error_after_connected`` or ``mark`` is on it.
    """
    original = getattr(consumer, "on_connection_error_after_connected", None)
    marks: frozenset[str] = getattr(original, "taskpool_marks", frozenset())
    if original is None or mark in marks:
        return False

    def on_connection_error_after_connected(exc: BaseException) -> Any:
        try:
            callback()
        except Exception:  # never make a connection loss worse
            logger.exception("taskpool: %s", what)
        return original(exc)

    on_connection_error_after_connected.taskpool_marks = marks | {mark}  # type: ignore[attr-defined]
    consumer.on_connection_error_after_connected = on_connection_error_after_connected
    return True


# == end of client and consumer internals ======================================================


# -- autoscale: pool probes and the consumer's prefetch window (taskpool.worker.autoscale) -----
# Read from celery 5.7.0: celery/concurrency/{base,prefork,gevent}.py, celery/worker/consumer/consumer.py.
def inner_pool(pool: Any) -> Any:
    """The pool object a Celery pool wraps, or None (not started, or a pool without one).

    ``BasePool._pool`` (``celery/concurrency/base.py`` declares it ``None``): prefork's
    ``TaskPool.on_start`` sets it to billiard's ``Pool``, gevent's to a ``gevent.pool.Pool`` of
    ``limit`` greenlets. Celery has no public accessor.
    """
    return getattr(pool, "_pool", None)


def gevent_free_slots(pool: Any) -> int | None:
    """Greenlets a Celery gevent pool could start now; None for a pool without a gevent pool.

    ``gevent.pool.Pool.free_count()`` (public in gevent) of the private ``TaskPool._pool``.
    """
    free_count = getattr(inner_pool(pool), "free_count", None)
    return int(free_count()) if callable(free_count) else None


def pool_size(pool: Any) -> int:
    """Processes, threads or greenlets of a Celery pool now.

    ``BasePool.num_processes``, a property Celery's own ``Autoscaler.processes`` reads: ``limit``
    on most pools, billiard's private ``Pool._processes`` on prefork.
    """
    return int(pool.num_processes)


def sync_pool_limit(pool: Any) -> None:
    """Make ``BasePool.limit`` (``max-concurrency`` in ``inspect stats``) the pool's size now.

    Celery's prefork pool keeps the ``limit`` it started with, while billiard's ``grow`` and
    ``shrink`` change ``Pool._processes``. A pool without a settable ``limit`` keeps its own.
    """
    with contextlib.suppress(Exception):
        pool.limit = pool.num_processes


def update_prefetch_count(consumer: Any, delta: int) -> None:
    """Widen (``delta`` > 0) or narrow the consumer's prefetch window by ``delta`` pool slots.

    ``Consumer._update_prefetch_count(index)`` (private), what Celery's own
    ``Autoscaler._update_consumer_prefetch_count`` calls when ``celery control autoscale``
    changes the maximum. Nothing happens before the consumer has its QoS (not started yet).
    """
    if consumer is not None and getattr(consumer, "qos", None) is not None:
        consumer._update_prefetch_count(delta)


# -- end of autoscale ------------------------------------------------------------------------------


# == the prefork pool's warm shutdown: jobs a child already has =================================


class KeepHandedJobsOnFlush:
    """Mixin for Celery's ``AsynPool``: ``flush()`` at warm shutdown finishes the job messages it
    started writing and keeps the jobs a live child already received (their results are read,
    acked and stored; the children exit at once instead of waiting 30 s for a reader).

    Internals of ``celery.concurrency.asynpool.AsynPool`` (Celery 5.7.0): ``flush()``,
    ``_flush_writer(proc, writer)``, ``_active_writers``, ``_busy_workers``, ``_cache``,
    ``asynpool._get_job_writer(job)``; of billiard's ``ApplyResult`` (4.3.2): ``_accepted``,
    ``_write_to`` (the child the message went to), ``_job``; billiard's ``Pool._state`` with
    ``RUN`` and ``TERMINATE``. Why: see :mod:`taskpool.worker.pools.prefork`.
    """

    # AsynPool's, declared for the type checker (the mixin has no state of its own).
    _state: Any
    _cache: Any
    _active_writers: Any
    _busy_workers: Any
    _flush_writer: Any

    def flush(self) -> None:
        from billiard.pool import RUN, TERMINATE
        from celery.concurrency import asynpool

        if self._state == TERMINATE:
            super().flush()  # type: ignore[misc]
            return
        handed = [
            job
            for job in self._cache.values()
            if not job._accepted and job._write_to is not None and job._write_to._is_alive()
        ]
        if self._state != RUN:  # closed first: Celery's flush would drop the half-written messages
            for job in handed:
                writer = asynpool._get_job_writer(job)
                if writer is not None and writer in self._active_writers:
                    self._flush_writer(job._write_to, writer)
        super().flush()  # type: ignore[misc]
        for job in handed:
            proc = job._write_to
            if proc._is_alive():  # it has the whole message: it runs the job, we read the result
                self._cache.setdefault(job._job, job)
                self._busy_workers.add(proc.inqW_fd)


# == the client's Redis result consumer: giving up on an unreachable Redis =======================


class ReconnectFailureHook:
    """Mixin for ``celery.backends.redis.ResultConsumer``: :meth:`on_reconnect_failed` is called
    with the connection error when Celery's reconnect gives up (it may raise its own error).

    Internals of ``ResultConsumer`` (Celery 5.7.0): ``_reconnect()`` (retries ``_reconnect_pubsub``
    under the backend's retry policy) and ``_connection_errors``; ``reconnect_on_error()`` calls
    ``_reconnect`` after a connection error and turns a connection error it raises into
    ``RuntimeError("Retry limit exceeded ...")``, letting any other exception through.
    """

    _connection_errors: Any

    def _reconnect(self) -> None:
        try:
            super()._reconnect()  # type: ignore[misc]
        except self._connection_errors as exc:
            self.on_reconnect_failed(exc)
            raise

    def on_reconnect_failed(self, exc: BaseException) -> None:
        """Called when reconnecting failed for good; raise to replace Celery's RuntimeError."""


def requests_in_pool() -> list[str]:
    """Delivery tags of the requests this worker reserved or runs (Celery's ``reserved_requests``
    and ``active_requests``, ``celery/worker/state.py``, Celery 5.7.0), read before a connection
    loss clears them: these are, or will be, running in the pool and acked when they end.

    Internal: ``Request.message`` (``celery/worker/request.py``) is the kombu message, whose
    ``delivery_tag`` the Redis QoS keys its unacked hash by. Gate-held requests are reserved too
    (the default strategy reserves before it hands a request over); the admission step restores
    those itself.
    """
    from celery.worker import state as worker_state

    tags = []
    for request in (*worker_state.reserved_requests, *worker_state.active_requests):
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if tag is not None:
            tags.append(str(tag))
    return tags


def rate_limit_handlers(consumer: Any, on_task_request: Callable[[Any], Any]) -> dict[str, Any]:
    """Celery's per-worker ``rate_limit`` token buckets, ending in ``on_task_request``.

    Celery's default strategy sends a rate-limited request to ``consumer._limit_task`` (and an ETA
    one to ``_limit_post_eta``), whose bucket moves it on to the consumer's own
    ``on_task_request`` when its token comes: the pool, past taskpool's admission gate. These are
    the same three steps (celery/worker/consumer/consumer.py, 5.x) moving the request to
    ``on_task_request`` instead, as the attributes of a consumer view (no public hook exists).
    """
    from celery.worker.state import task_reserved

    def move_to_pool(request: Any) -> None:
        task_reserved(request)
        on_task_request(request)

    def schedule(bucket: Any) -> None:
        while True:
            try:
                request, tokens = bucket.pop()
            except IndexError:
                break
            if bucket.can_consume(tokens):
                move_to_pool(request)
                continue
            bucket.contents.appendleft((request, tokens))  # keep the order
            consumer._limit_order = (consumer._limit_order + 1) % 10
            consumer.timer.call_after(
                bucket.expected_time(tokens), schedule, (bucket,), priority=consumer._limit_order
            )
            break

    def limit_task(request: Any, bucket: Any, tokens: int) -> None:
        bucket.add((request, tokens))
        schedule(bucket)

    def limit_post_eta(request: Any, bucket: Any, tokens: int) -> None:
        consumer.qos.decrement_eventually()
        bucket.add((request, tokens))
        schedule(bucket)

    return {"_limit_task": limit_task, "_limit_post_eta": limit_post_eta}
