"""Celery internals taskpool relies on, in one place (read from celery 5.7.0 as installed).

Each function names the private attribute or method it uses; tests/test_compat.py fails loudly
when one of them changes.
"""

from __future__ import annotations

import contextlib
from typing import Any


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
