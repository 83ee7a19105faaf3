"""Sending calls: in chunks of :data:`PUBLISH_CHUNK`, one Redis pipeline and one SUBSCRIBE
each, after the queue-length check; revoking what a stopped fan-out sent; and, when a wait
timed out, telling whether any worker consumes the task's queue."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from celery._state import task_join_will_block
from celery.result import AsyncResult, EagerResult
from celery.utils import uuid
from kombu.exceptions import BatchPublishError

from taskpool.client.fanout.checks import CallArgs, check_call
from taskpool.compat.celery import subscribe_results
from taskpool.core.errors import ConfigurationError, QueueFull
from taskpool.core.names import queue_keyprefix
from taskpool.stores.queues import queue_depths

if TYPE_CHECKING:
    from taskpool.client.app import TaskPool
    from taskpool.client.task import TaskpoolTask

logger = logging.getLogger("taskpool.fanout")

#: Messages per publish pipeline (one Redis round trip each), and per queue-length check.
PUBLISH_CHUNK = 1000


def publish(task: TaskpoolTask, calls: Iterable[CallArgs]) -> list[AsyncResult]:
    """Send every ``(args, kwargs)`` call of ``task`` now, pipelined; returns their results.

    No backpressure and no waiting: for callers that collect the results themselves (and the
    fan-out bench). Chunks of :data:`PUBLISH_CHUNK` messages, one Redis round trip each.

    Raises:
        QueueFull: a chunk found its queue at ``max_queue_length``; what earlier chunks sent is
            revoked, nothing of that chunk was sent.
    """
    source = iter(calls)
    sent: list[AsyncResult] = []
    try:
        while True:
            start = len(sent)
            chunk = [
                check_call(task, start + i, call)
                for i, call in enumerate(itertools.islice(source, PUBLISH_CHUNK))
            ]
            if not chunk:
                return sent
            sent.extend(publish_chunk(task, chunk))
    except BaseException:
        revoke(task, [r.id for r in sent if not isinstance(r, EagerResult)])
        raise


def publish_chunk(task: TaskpoolTask, chunk: list[CallArgs]) -> list[AsyncResult]:
    """Send one chunk of calls in one Redis pipeline (after the queue-length check).

    An exception before the pipeline runs publishes nothing; if the pipeline itself fails
    (kombu's ``BatchPublishError``: delivery uncertain), the chunk's ids are revoked too.
    """
    app = task.app
    if app.conf.task_always_eager:
        return [task.apply_async(args, kwargs) for args, kwargs in chunk]
    queues = queues_of(task, chunk)
    check_queue(task, queues, len(chunk))
    ids = [uuid() for _ in chunk]
    if not task.ignore_result:  # Celery subscribes to nothing for those either
        _subscribe(task.backend, ids)
    try:
        with app.producer_or_acquire() as producer, producer.batch(max_size=64 * PUBLISH_CHUNK):
            # Declared once per chunk here, not per message by Celery (``declare=[]``): kombu's
            # cached maybe_declare still copies and binds the queue on every call, about a
            # fifth of the publish cost. ``retry=False``: inside a batch a publish only buffers;
            # the flush is never retried (a failure raises BatchPublishError).
            for queue in queues.values():
                if queue is not None:
                    producer.maybe_declare(queue)
            return [
                task.apply_async(args, kwargs, task_id=task_id, producer=producer, declare=[], retry=False)
                for task_id, (args, kwargs) in zip(ids, chunk, strict=True)
            ]
    except BatchPublishError:
        revoke(task, ids)
        raise


# -- the queue limit ------------------------------------------------------------------------------
def queues_of(task: TaskpoolTask, calls: list[CallArgs]) -> dict[str, Any]:
    """The queues the app's router sends these calls to: name -> kombu Queue (None when the
    route names an exchange and routing key rather than a queue)."""
    router = task.app.amqp.router
    found: dict[str, Any] = {}
    for args, kwargs in calls:
        options = router.route({}, task.name, args, kwargs, task)
        queue = options.get("queue")
        name = getattr(queue, "name", None) or options.get("routing_key")
        if not name:
            raise ConfigurationError(f"task {task.name!r}: cannot tell the queue of route {options!r}")
        found.setdefault(str(name), queue if hasattr(queue, "name") else None)
    return found


def check_queue(task: TaskpoolTask, queues: dict[str, Any], count: int) -> None:
    app: TaskPool = task.app
    limit = app.settings.max_queue_length
    if limit <= 0:
        return
    names = sorted(queues)
    depths = queue_depths(
        app.broker_redis, names, keyprefix=queue_keyprefix(app.conf.broker_transport_options)
    )
    for name in names:
        length = depths[name]
        if length >= limit:
            raise QueueFull(
                f"task {task.name!r}: queue {name!r} holds {length} message(s), at or above "
                f"max_queue_length={limit}; nothing of these {count} call(s) was sent, try again later"
            )


# -- why a wait timed out -------------------------------------------------------------------------
#: Seconds the timeout path waits for workers to say which queues they consume.
CONSUMER_CHECK_TIMEOUT = 1.0


def no_consumer_hint(task: Any) -> str:
    """On a timeout: a sentence naming the task's queue when no live worker consumes it, else "".

    One broadcast (``inspect active_queues``, up to :data:`CONSUMER_CHECK_TIMEOUT` seconds); only
    called once a wait has already timed out. Any error of the check itself gives "".
    """
    try:
        queues = sorted(queues_of(task, [((), {})]))
        replies = task.app.control.inspect(timeout=CONSUMER_CHECK_TIMEOUT).active_queues() or {}
    except Exception:
        logger.debug("taskpool: could not tell who consumes %s's queue", task.name, exc_info=True)
        return ""
    consumed = {q.get("name") for answer in replies.values() for q in answer or ()}
    missing = [name for name in queues if name not in consumed]
    if not missing:
        return ""
    opts = getattr(task, "taskpool", None)
    pool = getattr(opts, "pool", None)
    start = f" (a `{pool}` worker: `taskpool worker -A <app> --pool {pool}`)" if pool else ""
    if opts is not None and opts.gpu_slots:
        start = f" (a `{pool}` worker with GPU slots: TASKPOOL_GPUS >= {opts.gpu_slots})"
    names = ", ".join(repr(n) for n in missing)
    return f"no live worker consumes queue {names} ({len(replies)} worker(s) answered): start one{start}"


# -- the result channel ---------------------------------------------------------------------------
def _subscribe(backend: Any, task_ids: list[str]) -> None:
    """Subscribe Celery's Redis result consumer to all ``task_ids`` with one SUBSCRIBE.

    Does nothing where Celery would not subscribe either (inside a task) and where the consumer
    is not the one this relies on (:func:`taskpool.compat.celery.subscribe_results`): Celery then
    subscribes per message as usual.
    """
    if not task_ids or task_join_will_block() or not getattr(backend, "is_async", False):
        return
    subscribe_results(backend, task_ids)


def revoke(task: TaskpoolTask, task_ids: list[str]) -> None:
    """One ``revoke`` broadcast for ``task_ids``; a failure is logged, never raised over the
    error that made the map stop."""
    if not task_ids:
        return
    try:
        task.app.control.revoke(task_ids)
    except Exception:
        logger.exception("taskpool: could not revoke %d call(s) of %s", len(task_ids), task.name)
