"""TaskpoolTask: the Celery task base class taskpool's tasks are built on."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import celery
from celery import _state as celery_state
from celery.exceptions import Ignore, Reject, Retry

from taskpool.compat.celery import repoint_current_task
from taskpool.core import names
from taskpool.core.backoff import Backoff
from taskpool.core.errors import BatchError
from taskpool.core.keys import bind
from taskpool.core.limits import check_call, is_keyed
from taskpool.core.options import TaskOptions
from taskpool.runtime import aio
from taskpool.runtime import batch as batching
from taskpool.runtime.gpu import use_leased_device
from taskpool.stores.dead_letters import DeadLetter

if TYPE_CHECKING:
    from taskpool.client.app import TaskPool

logger = logging.getLogger("taskpool")

#: Celery's control-flow exceptions pass through retry_on untouched.
_CONTROL_FLOW = (Retry, Ignore, Reject)

#: The (task, request) an ``async def`` task's coroutine runs for. On gevent the coroutine
#: runs in the worker's loop greenlet, where Celery's greenlet-local request stack is empty;
#: asyncio gives each coroutine its own context, so the request travels with it.
_coroutine_request: contextvars.ContextVar[tuple[celery.Task, Any] | None] = contextvars.ContextVar(
    "taskpool_coroutine_request", default=None
)


async def _with_request(task: celery.Task, request: Any, coro: Coroutine[Any, Any, Any]) -> Any:
    _coroutine_request.set((task, request))
    return await coro


def _current_task() -> Any:
    """``celery.current_task``, seen from inside coroutines too (see :func:`_follow_coroutines`)."""
    current = _coroutine_request.get()
    return current[0] if current is not None else celery_state.get_current_task()


def _follow_coroutines() -> None:
    """Point ``celery.current_task`` at :func:`_current_task`.

    Celery's proxy reads a greenlet-local task stack, empty in the gevent loop's greenlet where
    every ``async def`` task's coroutine runs. No public hook exists: see
    :func:`taskpool.compat.celery.repoint_current_task`.
    """
    if not repoint_current_task(_current_task):  # current_task stays as Celery made it
        logger.warning("taskpool: celery.current_task cannot follow async tasks on this Celery version")


_follow_coroutines()


class TaskpoolTask(celery.Task):
    """A Celery task with taskpool's options.

    Attributes:
        taskpool: the task's validated :class:`~taskpool.options.TaskOptions`.
        backoff_policy: waits between retries, from ``backoff``, ``backoff_max`` and ``jitter``.
    """

    taskpool: TaskOptions
    backoff_policy: Backoff
    #: The signature a call binds to (keyed limit and rate names name its parameters).
    taskpool_signature: inspect.Signature | None = None

    def apply_async(self, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        """Celery's ``apply_async``; a keyed limit or rate name that this call's arguments cannot
        fill is a :class:`~taskpool.errors.ConfigurationError` here, before anything is sent."""
        record = getattr(self, "taskpool", None)
        if record is not None and is_keyed(record):
            check_call(record, bind(self.taskpool_signature, args or (), kwargs or {}))
        return super().apply_async(args, kwargs, *rest, **options)

    def _get_request(self) -> Any:
        current = _coroutine_request.get()
        if current is not None and current[0] is self:
            return current[1]
        return super()._get_request()

    request = property(_get_request)

    # -- fan-out (taskpool.fanout); these replace Celery's canvas-building ``map``/``starmap``,
    # -- which stay available as ``celery.canvas.xmap``/``xstarmap``.
    def spawn(self, *args: Any, **kwargs: Any) -> Any:
        """Send one call now; returns a :class:`~taskpool.fanout.Call` (``get``, ``status``, ``cancel``)."""
        from taskpool.client.fanout import spawn

        return spawn(self, args, kwargs)

    def map(
        self,
        items: Any,
        *,
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Call the task once per item (``task(item, **kwargs)``); yields the results.

        See :mod:`taskpool.fanout`: pipelined, with backpressure; ``order_outputs=False`` yields
        in completion order; ``return_exceptions=True`` yields a failure's exception in its place.
        """
        from taskpool.client.fanout import map_items

        return map_items(
            self,
            items,
            kwargs=kwargs,
            order_outputs=order_outputs,
            return_exceptions=return_exceptions,
            timeout=timeout,
        )

    def starmap(
        self,
        arg_tuples: Any,
        *,
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Call the task once per tuple (``task(*args, **kwargs)``); yields the results."""
        from taskpool.client.fanout import starmap_items

        return starmap_items(
            self,
            arg_tuples,
            kwargs=kwargs,
            order_outputs=order_outputs,
            return_exceptions=return_exceptions,
            timeout=timeout,
        )

    def dead_letter(self, exc: BaseException) -> None:
        """Keep a record of this request, which failed for good with ``exc``.

        Called before Celery stores the FAILURE, so whoever sees the failure finds the record.
        """
        request = self.request
        record = DeadLetter.for_exception(
            exc,
            task=self.name,
            task_id=request.id,
            args=request.args,
            kwargs=request.kwargs,
            attempts=(request.retries or 0) + 1,
            queue=(request.delivery_info or {}).get("routing_key"),
            chain=list(request.chain) if request.chain else None,
        )
        app: TaskPool = self.app
        try:
            app.dead_letters.add(record)
        except Exception:  # Celery still records the failure itself; do not mask it
            logger.exception("taskpool: could not store the dead letter of %s[%s]", self.name, request.id)
        else:
            logger.warning(
                "taskpool: %s[%s] failed after %d attempt(s): %s; dead letter %s",
                self.name,
                request.id,
                record.attempts,
                record.exception,
                record.id,
            )


def make_run(fun: Callable[..., Any], options: TaskOptions, bind: bool) -> Callable[..., Any]:
    """The task's ``run``: calls ``fun`` (awaiting it if async) and applies the retry policy.

    Always bound to the task, so the retry count is at hand; ``fun`` gets the task
    only when the user asked for ``bind=True``.
    """
    retry_on = options.retry_on
    retries = options.retries

    gated = options.has_limits
    gpu = bool(options.gpu_slots)
    batched = options.batch is not None

    def call(task: TaskpoolTask, args: Any, kwargs: Any) -> Any:
        if batched:
            # Inside a worker's batch the input's outcome is ready (taskpool.batching.run_batch);
            # called any other way (eager, .apply(), directly) it is a batch of one.
            outcome = batching.current_outcome()
            if batching.outside_batch(outcome):
                outcome = batching.eager_outcome(task, args, kwargs)
            return batching.deliver(outcome)
        result = fun(task, *args, **kwargs) if bind else fun(*args, **kwargs)
        if asyncio.iscoroutine(result):
            result = aio.run(_with_request(task, task.request, result))
        return result

    @functools.wraps(fun)
    def run(task: TaskpoolTask, *args: Any, **kwargs: Any) -> Any:
        try:
            if not gated:
                return call(task, args, kwargs)
            request = task.request
            if request.is_eager:
                from taskpool.runtime.leases import eager_admission

                with eager_admission(task, args, kwargs) as gpus:
                    request.taskpool_gpus = gpus
                    return call(task, args, kwargs)
            if gpu:
                use_leased_device(getattr(request, names.GPUS_KEY, None) or [])
            try:
                return call(task, args, kwargs)
            finally:
                from taskpool.runtime.leases import release_in_pool

                release_in_pool(task.app, getattr(request, names.LEASES_KEY, None))
        except _CONTROL_FLOW:
            raise
        except Exception as exc:  # KeyboardInterrupt, SystemExit, GreenletExit: not task failures
            done = task.request.retries or 0
            if done >= retries or not isinstance(exc, retry_on) or isinstance(exc, BatchError):
                task.dead_letter(exc)
                raise
            countdown = task.backoff_policy.delay(done)
            logger.info(
                "taskpool: %s[%s] attempt %d failed (%r); retry in %.3f s",
                task.name,
                task.request.id,
                done + 1,
                exc,
                countdown,
            )
            raise task.retry(exc=exc, countdown=countdown, max_retries=retries) from exc

    return run
