"""Fan-out: one task over many inputs (``task.map``/``starmap``), or one call now (``task.spawn``).

    for square in square_task.map(range(10_000)):        # results as they come, input order
        ...
    call = crunch.spawn(page)                             # a Call: a celery AsyncResult
    call.status, call.get(timeout=10), call.cancel()

How it uses Celery (public APIs unless said otherwise):

* **Pipelined submit.** Inputs go out in chunks of up to :data:`PUBLISH_CHUNK`, each through
  ``task.apply_async(..., producer=producer)`` inside ``producer.batch()`` (kombu 5.7): the
  Redis transport buffers each message's LPUSH in one non-transactional pipeline and executes
  it once when the chunk ends, so a chunk is one round trip, and an error while a chunk is
  being built (a bad argument, :class:`~taskpool.errors.QueueFull`) publishes nothing of it.
  Celery's task messages use the anonymous exchange for direct queues, so there is no per
  message exchange lookup (SMEMBERS); the chunk's queues are declared once per chunk
  (``producer.maybe_declare``) and each message is sent with ``declare=[]``.
* **One SUBSCRIBE per chunk.** Celery's Redis result backend subscribes to each task's result
  channel as the task is sent (``backend.on_task_call``): one SUBSCRIBE command per message.
  :func:`publish` gives the chunk task ids of its own and subscribes the result consumer to
  all of them with one command first, so Celery's per-message subscribe finds them
  subscribed and sends nothing. This reaches into ``ResultConsumer`` (``_locked``,
  ``_pubsub``, ``subscribed_to``: :func:`taskpool.compat.celery.subscribe_results`); any other
  backend, or a consumer without those, keeps Celery's own per-message subscribe.
* **Results through Celery's result machinery.** Each sent call is watched with
  ``AsyncResult.then`` and the map waits with the backend's drainer
  (``result_consumer.drainer.drain_events_until``: :func:`taskpool.compat.celery.drain_results_until`),
  as ``AsyncResult.get`` does; backends without the async API are polled (``backend.get_many``,
  one MGET per poll, when the backend has it).
* **Backpressure.** At most ``app.settings.map_max_outstanding`` inputs are submitted and not
  yet yielded to the caller; the map tops up (in one chunk) when a tenth of that has been
  yielded, or when nothing it sent is unfinished, and reads the caller's inputs only as it
  submits them.
* **Failure, early close, timeout.** The inputs not finished yet are revoked with one
  ``app.control.revoke(ids)``; a worker drops a revoked message when it takes it (a task
  already running goes on).
* **Queue limit.** With ``app.settings.max_queue_length`` > 0, each chunk (and each spawn)
  first reads the length of its queues (every priority list, one pipeline) and raises
  :class:`~taskpool.errors.QueueFull` when one holds that many messages or more.
* **Eager mode** (``task_always_eager``): ``apply_async`` runs the task in-process and returns
  an ``EagerResult``; map runs one input at a time as the caller asks for it, and spawn
  returns an :class:`EagerCall`.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from celery import states
from celery._state import task_join_will_block
from celery.backends.base import DisabledBackend
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult, EagerResult, assert_will_not_block
from celery.utils import uuid
from kombu.exceptions import BatchPublishError
from vine import promise

from taskpool.compat.celery import drain_results_until, subscribe_results
from taskpool.core.errors import ConfigurationError, QueueFull
from taskpool.core.names import queue_keyprefix
from taskpool.stores.queues import queue_depths

if TYPE_CHECKING:
    from taskpool.client.app import TaskPool
    from taskpool.client.task import TaskpoolTask

logger = logging.getLogger("taskpool.fanout")

#: Messages per publish pipeline (one Redis round trip each), and per queue-length check.
PUBLISH_CHUNK = 1000
#: Seconds between polls of a result backend without the async API (database, filesystem...).
POLL_INTERVAL = 0.1

#: One call of a task: positional arguments, keyword arguments.
CallArgs = tuple[tuple[Any, ...], dict[str, Any]]


class Call(AsyncResult):
    """The handle :func:`spawn` returns: a ``celery.result.AsyncResult`` (``get``, ``status``,
    ``ready``, ``then``, ...) that can also be cancelled.

    It keeps the result object Celery made while sending, so Celery's subscription to the
    result channel lasts as long as the handle (``then`` callbacks cannot miss the result).
    """

    _sent: AsyncResult | None = None
    _task_name: str | None = None  # Celery's AsyncResult ignores its task_name argument

    def get(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's ``AsyncResult.get``; a timeout says when no live worker consumes the queue."""
        try:
            return super().get(*args, **kwargs)
        except CeleryTimeoutError as exc:
            task = self.app.tasks.get(self._task_name) if self._task_name else None
            hint = no_consumer_hint(task) if task is not None and not self.ready() else ""
            if not hint:
                raise
            raise CeleryTimeoutError(f"{exc}; {hint}") from exc

    def cancel(self, terminate: bool = False) -> None:
        """Revoke the call: a worker that takes it drops it, and its state becomes ``REVOKED``.

        Args:
            terminate: also stop it if it is running already (Celery's ``revoke(terminate=True)``:
                a signal to the process running it; prefork only).
        """
        self.revoke(terminate=terminate)


class EagerCall(EagerResult, Call):
    """:class:`Call` of a task that already ran in-process (``task_always_eager``).

    ``cancel`` marks it ``REVOKED`` (Celery's ``EagerResult.revoke``); nothing is stopped.
    """


# -- validation -----------------------------------------------------------------------------------
def _check_timeout(task: Any, timeout: Any) -> float | None:
    if timeout is None:
        return None
    seconds = float(timeout) if isinstance(timeout, numbers.Real) and not isinstance(timeout, bool) else -1.0
    if not seconds >= 0:  # also NaN
        raise ConfigurationError(
            f"task {task.name!r}: timeout={timeout!r} must be a number of seconds >= 0, or None"
        )
    return None if math.isinf(seconds) else seconds


def _check_flag(task: Any, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"task {task.name!r}: {name}={value!r} must be True or False")
    return value


def _check_kwargs(task: Any, kwargs: Any) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise TypeError(f"task {task.name!r}: kwargs={kwargs!r} must be a dict with string keys, or None")
    return kwargs


def _iterate(task: Any, option: str, items: Any) -> Iterator[Any]:
    if isinstance(items, str | bytes | dict):
        # Iterable, but almost surely a mistake: each character (key) would become an input.
        raise TypeError(
            f"task {task.name!r}: {option}={_short(items)} must be an iterable of inputs "
            f"(a list, a range, a generator, ...), not a {type(items).__name__}"
        )
    try:
        return iter(items)
    except TypeError:
        raise TypeError(
            f"task {task.name!r}: {option}={_short(items)} must be an iterable of inputs, "
            f"got a {type(items).__name__}"
        ) from None


def _check_call(task: Any, index: int, call: Any) -> CallArgs:
    if not (isinstance(call, tuple) and len(call) == 2):
        raise TypeError(
            f"task {task.name!r}: call #{index} must be an (args, kwargs) pair, got {_short(call)}"
        )
    args, kwargs = call
    if not isinstance(args, tuple | list):
        raise TypeError(
            f"task {task.name!r}: arguments of input #{index} must be a tuple or a list, got {_short(args)}"
        )
    if not isinstance(kwargs, dict):
        raise TypeError(
            f"task {task.name!r}: keyword arguments of input #{index} must be a dict, got {kwargs!r}"
        )
    return tuple(args), kwargs


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_results_kept(task: Any) -> None:
    if isinstance(task.backend, DisabledBackend):
        raise ConfigurationError(f"task {task.name!r}: map needs a result backend, and the app has none")
    if task.ignore_result:
        raise ConfigurationError(
            f"task {task.name!r}: map needs the task's results, but it has ignore_result=True"
        )


# -- public entry points --------------------------------------------------------------------------
def spawn(task: TaskpoolTask, args: Any, kwargs: Any) -> Call:
    """Send one call of ``task`` now; returns its :class:`Call`.

    Raises:
        QueueFull: ``max_queue_length`` is set and the task's queue holds that many messages.
    """
    args, kwargs = _check_call(task, 0, (tuple(args), dict(kwargs)))
    app: TaskPool = task.app
    if not app.conf.task_always_eager and app.settings.max_queue_length > 0:
        _check_queue(task, _queues_of(task, [(args, kwargs)]), 1)
    sent = task.apply_async(args, kwargs)
    if isinstance(sent, EagerResult):
        return EagerCall(*sent.__reduce_args__())
    call = Call(sent.id, backend=sent.backend, task_name=task.name, app=task.app)
    call._sent, call._task_name = sent, task.name
    return call


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
    extra = _check_kwargs(task, kwargs)
    inputs = _iterate(task, "items", items)
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
    extra = _check_kwargs(task, kwargs)
    inputs = _iterate(task, "arg_tuples", arg_tuples)
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
    ordered = _check_flag(task, "order_outputs", order_outputs)
    keep_exceptions = _check_flag(task, "return_exceptions", return_exceptions)
    seconds = _check_timeout(task, timeout)
    assert_will_not_block()
    source = iter(calls)
    if task.app.conf.task_always_eager:
        return _run_eager(task, source, keep_exceptions, seconds)
    _check_results_kept(task)
    return _MapRun(task, source, ordered, keep_exceptions, seconds, timeout).run()


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
                _check_call(task, start + i, call)
                for i, call in enumerate(itertools.islice(source, PUBLISH_CHUNK))
            ]
            if not chunk:
                return sent
            sent.extend(publish_chunk(task, chunk))
    except BaseException:
        _revoke(task, [r.id for r in sent if not isinstance(r, EagerResult)])
        raise


def publish_chunk(task: TaskpoolTask, chunk: list[CallArgs]) -> list[AsyncResult]:
    """Send one chunk of calls in one Redis pipeline (after the queue-length check).

    An exception before the pipeline runs publishes nothing; if the pipeline itself fails
    (kombu's ``BatchPublishError``: delivery uncertain), the chunk's ids are revoked too.
    """
    app = task.app
    if app.conf.task_always_eager:
        return [task.apply_async(args, kwargs) for args, kwargs in chunk]
    queues = _queues_of(task, chunk)
    _check_queue(task, queues, len(chunk))
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
        _revoke(task, ids)
        raise


# -- the queue limit ------------------------------------------------------------------------------
def _queues_of(task: TaskpoolTask, calls: list[CallArgs]) -> dict[str, Any]:
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


def _check_queue(task: TaskpoolTask, queues: dict[str, Any], count: int) -> None:
    app: TaskPool = task.app
    limit = app.settings.max_queue_length
    if limit <= 0:
        return
    names = sorted(queues)
    depths = queue_depths(app.redis, names, keyprefix=queue_keyprefix(app.conf.broker_transport_options))
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
        queues = sorted(_queues_of(task, [((), {})]))
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


def _revoke(task: TaskpoolTask, task_ids: list[str]) -> None:
    """One ``revoke`` broadcast for ``task_ids``; a failure is logged, never raised over the
    error that made the map stop."""
    if not task_ids:
        return
    try:
        task.app.control.revoke(task_ids)
    except Exception:
        logger.exception("taskpool: could not revoke %d call(s) of %s", len(task_ids), task.name)


# -- waiting for results --------------------------------------------------------------------------
class _Watcher:
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


def _outcome(result: AsyncResult, return_exceptions: bool) -> Any:
    """The value of a finished result: its return value, else its exception (raised, or given
    back with ``return_exceptions``)."""
    if return_exceptions:
        value = result.get(propagate=False)
        if result.state in states.PROPAGATE_STATES and not isinstance(value, BaseException):
            return Exception(value)
        return value
    return result.get(propagate=True)


def _run_eager(
    task: TaskpoolTask, source: Iterator[Any], return_exceptions: bool, timeout: float | None
) -> Iterator[Any]:
    """Eager mode: each input runs in-process when the caller asks for it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for index, call in enumerate(source):
        if deadline is not None and time.monotonic() > deadline:
            raise CeleryTimeoutError(
                f"task {task.name!r}: map timed out after {timeout} s (eager, before input #{index})"
            )
        args, kwargs = _check_call(task, index, call)
        yield _outcome(task.apply_async(args, kwargs), return_exceptions)


class _MapRun:
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
        self.watcher = _Watcher(task.backend)
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
                    yield _outcome(result, self.return_exceptions)
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
                _check_call(self.task, self.submitted + i, call)
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
        _revoke(self.task, unfinished)
        for result in self.outstanding.values():
            self.watcher.forget(result)
        self.outstanding.clear()
        self.index_of.clear()
