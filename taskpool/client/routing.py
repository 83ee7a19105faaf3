"""Pool -> queue naming, task routes, and which queue a worker consumes.

Each pool type has its own queue (``<queue_prefix><pool>``). A task's queue follows
from its declared pool; a worker started with ``-P gevent`` consumes the gevent queue
unless ``-Q`` says otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kombu import Exchange, Queue

from taskpool.core.errors import ConfigurationError
from taskpool.core.settings import POOLS, Settings

if TYPE_CHECKING:
    from celery import Celery

#: Celery pool aliases and classes -> the taskpool pool whose queue that worker serves.
#: ``solo`` runs one task at a time in the worker process, like a one-child prefork pool.
_POOL_ALIASES = {
    "prefork": "prefork",
    "processes": "prefork",
    "solo": "prefork",
    "threads": "threads",
    "gevent": "gevent",
}
_POOL_CLASSES = {
    "celery.concurrency.prefork:TaskPool": "prefork",
    "celery.concurrency.solo:TaskPool": "prefork",
    "celery.concurrency.thread:TaskPool": "threads",
    "celery.concurrency.gevent:TaskPool": "gevent",
}


def queues(settings: Settings) -> tuple[Queue, ...]:
    names = [settings.queue_for(pool, gpu) for pool in POOLS for gpu in (False, True)]
    # Each queue gets a direct exchange of its own name: without one Celery binds every queue to
    # task_default_exchange (the default pool's queue name), which the worker banner then shows.
    # Celery publishes to direct queues through the anonymous exchange, so routing is unchanged.
    return tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in names)


def pool_of_worker(pool_cls: Any) -> str:
    """The taskpool pool a worker with this Celery pool (alias or class) serves."""
    if isinstance(pool_cls, str):
        if pool_cls in _POOL_ALIASES:
            return _POOL_ALIASES[pool_cls]
        if pool_cls in _POOL_CLASSES:
            return _POOL_CLASSES[pool_cls]
        raise ConfigurationError(f"worker pool {pool_cls!r}: taskpool serves {', '.join(POOLS)} (and solo)")
    # A pool class may say which taskpool pool it serves.
    declared = getattr(pool_cls, "taskpool_pool", None)
    if declared in POOLS:
        return str(declared)
    for klass in getattr(pool_cls, "__mro__", ()):
        name = f"{klass.__module__}:{klass.__qualname__}"
        if name in _POOL_CLASSES:
            return _POOL_CLASSES[name]
    raise ConfigurationError(f"worker pool {pool_cls!r}: taskpool serves {', '.join(POOLS)} (and solo)")


class Router:
    """``task_routes`` entry: sends a task known to the app to its pool's queue.

    Covers ``.delay()``, ``app.send_task(name)`` and canvas alike (Celery deprecates
    the per-task ``queue`` attribute in favour of ``task_routes``).
    """

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def __call__(self, name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any) -> Any:
        task = task if task is not None else self.app.tasks.get(name)
        opts = getattr(task, "taskpool", None)
        if opts is None:
            return None
        return {"queue": self.settings.queue_for(opts.pool, gpu=bool(opts.gpu_slots))}
