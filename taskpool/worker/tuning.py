"""What each pool's workers need to run real work at full speed, set when a worker starts.

taskpool acknowledges late (a message leaves Redis for good only when its task ended), so every
running, held or reserved request occupies the prefetch window. :func:`tune_worker` applies, each
time unless the user chose otherwise:

- the prefetch multiplier that suits the pool (:data:`~taskpool.settings.PREFETCH_MULTIPLIER`);
- on gevent, one result backend for the whole worker (``result_backend_thread_safe``): Celery keeps
  a backend per thread, and on gevent every task runs in a new greenlet, so each task built a
  backend (with ``importlib.metadata`` reads) and opened a new Redis connection, about 1 ms a task;
- on threads and gevent, a broker connection per slot (late acks ack from every slot).

Also :class:`GreenCreditStep`, which keeps a full window from stalling a gevent worker. A gevent
worker has no event loop (Celery's ``synloop``) and polls Redis with
``connection.drain_events(timeout=2.0)``. When the window is full, kombu's Redis transport stops
its BRPOP and waits out that poll (up to 2 s) before it looks at the window again, although acks
may have freed it a millisecond later (celery/celery#4378, #7718: 200 I/O tasks of 0.1 s on
``-P gevent -c 20`` took 18.5 s instead of 1.7 s). The step polls with a short timeout while the
window is full, so a freed slot is used within :data:`FULL_WINDOW_POLL` seconds.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from taskpool.compat.kombu import shorten_polls_without_credit
from taskpool.core.settings import PREFETCH_MULTIPLIER

#: Seconds a gevent worker's consumer waits, while its prefetch window is full, before it looks
#: at the window again (kombu would wait up to 2 s).
FULL_WINDOW_POLL = 0.01


def tune_worker(app: Any, worker: Any, pool: str) -> None:
    """Apply this module's per-pool settings for ``worker`` (Celery's ``WorkController``, at
    ``worker_init``, before its blueprint is built)."""
    choose_multiplier(app, worker, pool)
    if pool == "gevent" and "result_backend_thread_safe" not in app.conf.changes:
        app.conf.result_backend_thread_safe = True
    size_broker_connection_pool(app, worker, pool)


def size_broker_connection_pool(app: Any, worker: Any, pool: str) -> None:
    """Give threads and gevent workers a broker connection per slot.

    With late acks every thread or greenlet acks on a connection of its own, and kombu's
    Redis transport allows 10 by default: past that, acks fail with MaxConnectionsError and
    the unacked messages wait for the visibility timeout (celery/celery#1350).
    """
    if pool not in ("threads", "gevent"):
        return
    options = dict(app.conf.broker_transport_options or {})
    if "max_connections" in options:
        return  # the user's choice
    autoscale = worker.options.get("autoscale") or [0]
    concurrency = worker.concurrency if isinstance(worker.concurrency, int) else 0
    options["max_connections"] = max(concurrency, int(autoscale[0] or 0)) + 16
    app.conf.broker_transport_options = options


def choose_multiplier(app: Any, worker: Any, pool: str) -> None:
    """Set ``worker``'s prefetch multiplier to the pool's, unless the user chose one.

    The user's choice: ``worker_prefetch_multiplier`` in the config module, the environment
    (``TASKPOOL_WORKER_PREFETCH_MULTIPLIER``) or ``app.conf``, or ``--prefetch-multiplier`` with a
    value other than the setting's (Celery's option falls back to the setting when absent).
    """
    if "worker_prefetch_multiplier" in app.conf.changes:
        return
    cli = getattr(worker, "taskpool_cli_prefetch", None)
    if cli is not None and cli != app.conf.worker_prefetch_multiplier:
        return
    worker.prefetch_multiplier = PREFETCH_MULTIPLIER[pool]


class GreenCreditStep(bootsteps.StartStopStep):
    """Consumer bootstep of green pools: a full prefetch window is looked at again within
    :data:`FULL_WINDOW_POLL` seconds instead of after kombu's 2 s poll.

    Wraps the consumer connection's ``drain_events`` (what Celery's ``synloop`` calls) at each
    (re)connection: while the task channel's QoS has no credit, the poll's timeout becomes
    :data:`FULL_WINDOW_POLL`; with credit it is Celery's own, and a BRPOP reply ends it at once
    (:func:`taskpool.compat.kombu.shorten_polls_without_credit`).
    """

    label = "taskpool green credit"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def include_if(self, c: Any) -> bool:
        return bool(getattr(c.pool, "is_green", False))

    def start(self, c: Any) -> None:
        shorten_polls_without_credit(c, FULL_WINDOW_POLL)  # not kombu's virtual transport: no-op
