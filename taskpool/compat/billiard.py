"""billiard pool internals taskpool relies on, in one place (read from billiard 4.3.2 and Celery
5.7.0's ``AsynPool``, celery/concurrency/asynpool.py, billiard's ``Pool`` subclass).

Each name says which private attribute or method it uses; tests/integration/test_compat_internals.py
checks each still has the shape read here and fails naming the one to update. This module imports
nothing of taskpool, and nothing of billiard or Celery at import time.
"""

from __future__ import annotations

from typing import Any

# == the prefork pool's children: sentinel handler, child list, pool state =====================


class ProcessExitHook:
    """Mixin for Celery's ``AsynPool``: :meth:`after_process_exit` runs after Celery's handler
    of a child's sentinel.

    Internal: ``AsynPool._event_process_exit(hub, proc)`` (celery/concurrency/asynpool.py,
    Celery 5.7.0), called when a child's sentinel pipe turns readable; it untracks the sentinel,
    then calls billiard's ``maintain_pool()`` to reap exited children. No public hook exists.
    """

    def _event_process_exit(self, hub: Any, proc: Any) -> None:
        super()._event_process_exit(hub, proc)  # type: ignore[misc]
        self.after_process_exit(hub, proc)

    def after_process_exit(self, hub: Any, proc: Any) -> None:
        """Called after Celery's sentinel handler for ``proc``."""


def in_pool(pool: Any, proc: Any) -> bool:
    """Whether ``proc`` is still one of ``pool``'s children (not reaped yet).

    Internal: ``billiard.pool.Pool._pool``, the list of child ``Process`` objects, from which
    ``_join_exited_workers`` removes a child once ``waitpid`` reaped it (billiard 4.3.2).
    """
    return proc in pool._pool


def pool_running(pool: Any) -> bool:
    """Whether ``pool`` still runs (not closing or terminated).

    Internal: ``billiard.pool.Pool._state``, ``billiard.pool.RUN`` until ``close()`` or
    ``terminate()`` (billiard 4.3.2).
    """
    from billiard.pool import RUN

    return bool(pool._state == RUN)


# == end of the prefork pool's children ========================================================


# -- autoscale: the prefork children (taskpool.worker.autoscale) -------------------------------------
# Read from billiard 4.3.2: billiard/pool.py.
def child_pids(pool: Any) -> list[int]:
    """The pids of a billiard ``Pool``'s worker processes (empty for anything else).

    ``Pool._pool``, the list of ``Process`` objects; there is no public list of child pids
    (Celery's prefork ``TaskPool.info`` reads the same attribute).
    """
    procs = getattr(pool, "_pool", None)
    if not isinstance(procs, list):
        return []
    return [pid for pid in (getattr(proc, "pid", None) for proc in procs) if isinstance(pid, int)]


# -- end of autoscale ------------------------------------------------------------------------------
