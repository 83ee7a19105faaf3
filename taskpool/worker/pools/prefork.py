"""Celery's prefork pool, noticing a killed child at once: what ``-P prefork`` workers run on.

Celery's ``AsynPool`` watches each child's sentinel (a pipe the child holds open) and, when
it turns readable, reaps the child and fails its job with ``WorkerLostError``. The pipe closes
while the kernel tears the child down, a moment before ``waitpid`` can reap it: when the main
process wakes in that moment (likely on a busy machine), the reap finds the child still there,
the sentinel is already unregistered, and the death is noticed only at the pool's next
maintenance tick, up to 5 s later. Until then the killed task's GPU slots and limits stay held
and nothing is redelivered. This pool retries the reap a few times over about a second, so the
child is joined within milliseconds of its death. The hook and the child list are billiard's and
Celery's internals (:mod:`taskpool.compat.billiard`).

It also fixes two ways Celery 5.7's warm shutdown waits on a child (plain Celery has both):

- The worker closes the pool before the consumer stops, and the consumer's stop calls
  ``flush()``, which finishes a job message it started writing to a child only while the pool
  is running. A message larger than the pipe's buffer (64 KiB; a batch of inputs) that was half
  written was dropped, then the pool's join wrote the stop sentinel after the half message: the
  child waited for the rest of it for ever, and so did the worker.
- ``flush()`` forgets every job whose ACK the main process has not read yet, including jobs the
  child already has and runs. The join then stops reading the children's results once no job is
  left, and a child waits up to 30 s (billiard's ``_ensure_messages_consumed``) for its last
  result to be read before it exits; the task's message, never acked, ran again later.

``flush()`` here finishes the writes it started and keeps the jobs a live child received, so
their results are read, acked and stored as usual and the children exit at once
(:class:`taskpool.compat.celery.KeepHandedJobsOnFlush`: Celery's private pool internals).

``configure_worker`` in :mod:`taskpool.worker.autoscale` swaps it in for Celery's prefork pool.
"""

from __future__ import annotations

from typing import Any

from celery.concurrency import asynpool, prefork
from celery.utils.log import get_logger

from taskpool.compat.billiard import ProcessExitHook, in_pool, pool_running
from taskpool.compat.celery import KeepHandedJobsOnFlush
from taskpool.worker.pools import sigterm

__all__ = ["TaskPool"]

#: Seconds before the first retried reap; each next waits twice as long, up to REAP_PATIENCE.
REAP_FIRST_DELAY = 0.002
REAP_PATIENCE = 1.0

logger = get_logger(__name__)


class AsynPool(ProcessExitHook, KeepHandedJobsOnFlush, asynpool.AsynPool):
    """``AsynPool`` whose sentinel handler retries the reap of a child not yet reapable."""

    def after_process_exit(self, hub: Any, proc: Any) -> None:
        # Celery's handler untracked the sentinel, then ran maintain_pool().
        if in_pool(self, proc):  # exited, but not reapable yet: maintain_pool() left it in the pool
            logger.debug("taskpool: pool process %s closed its sentinel before it could be reaped", proc.pid)
            self._reap_later(hub, proc, REAP_FIRST_DELAY)

    def _reap_later(self, hub: Any, proc: Any, delay: float) -> None:
        def again() -> None:
            if not pool_running(self) or not in_pool(self, proc):
                return
            self.maintain_pool()
            if in_pool(self, proc) and delay * 2 <= REAP_PATIENCE:
                self._reap_later(hub, proc, delay * 2)  # else Celery's 5 s maintenance tick finds it

        hub.call_later(delay, again)


class TaskPool(prefork.TaskPool):
    """Celery's prefork ``TaskPool`` on :class:`AsynPool`.

    Attributes:
        taskpool_pool: the taskpool pool this class serves (read by
            :func:`taskpool.routing.pool_of_worker`).
    """

    taskpool_pool = "prefork"
    Pool = AsynPool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sigterm.install()  # before the pool forks: a group SIGTERM lets running tasks finish
