"""One call now: ``task.spawn`` and the handle it returns (:class:`Call`, :class:`EagerCall`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult, EagerResult

from taskpool.client.fanout.checks import check_call
from taskpool.client.fanout.sending import check_queue, no_consumer_hint, queues_of

if TYPE_CHECKING:
    from taskpool.client.app import TaskPool
    from taskpool.client.task import TaskpoolTask


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


def spawn(task: TaskpoolTask, args: Any, kwargs: Any) -> Call:
    """Send one call of ``task`` now; returns its :class:`Call`.

    Raises:
        QueueFull: ``max_queue_length`` is set and the task's queue holds that many messages.
    """
    args, kwargs = check_call(task, 0, (tuple(args), dict(kwargs)))
    app: TaskPool = task.app
    if not app.conf.task_always_eager and app.settings.max_queue_length > 0:
        check_queue(task, queues_of(task, [(args, kwargs)]), 1)
    sent = task.apply_async(args, kwargs)
    if isinstance(sent, EagerResult):
        return EagerCall(*sent.__reduce_args__())
    call = Call(sent.id, backend=sent.backend, task_name=task.name, app=task.app)
    call._sent, call._task_name = sent, task.name
    return call
