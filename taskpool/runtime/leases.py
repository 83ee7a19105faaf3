"""Slots taken or freed inside the process that runs the task (pool process, or eager caller)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from taskpool.core import keys, limits, rates
from taskpool.core.names import GPU, kind_of
from taskpool.core.options import TaskOptions
from taskpool.stores.limits import LimitStore
from taskpool.stores.rates import RateRefusal, Rates
from taskpool.stores.semaphores import Lease, LeaseKeeper, Semaphore

logger = logging.getLogger("taskpool.admission")


def release_in_pool(app: Any, leases: list[Any] | None) -> None:
    """Free a task's slots in the pool process, the moment its function returned.

    The next waiter then starts without waiting for the result to be stored, reported to the
    main process and acknowledged (a prefork hand-off costs several milliseconds). The main
    process still releases the leases when it hears of the end (a no-op by then), and alone
    when the pool process died. ``leases``: ``[[semaphore, capacity, token], ...]``, what the
    admission gate put in the request under :data:`taskpool.core.names.LEASES_KEY`.
    """
    if not leases:
        return
    settings = app.settings
    for name, capacity, token in leases:
        try:
            sem = Semaphore(app.redis, name, int(capacity), settings.lease_ttl, keyspace=settings.keyspace)
            sem.release_token(str(token))
        except Exception:  # the main process releases it when the task's end reaches it
            logger.warning(
                "taskpool: could not release %s from the pool; the worker will", name, exc_info=True
            )


@contextlib.contextmanager
def eager_admission(task: Any, args: Any = (), kwargs: Any = None) -> Iterator[list[int]]:
    """Eager mode (``.apply()``, ``task_always_eager``): take the same limits in this process.

    Blocks until every need is granted (in a fixed order, so two eager callers cannot
    deadlock), keeps the leases renewed while the task runs, and yields the GPU slots.
    """
    app = task.app
    options: TaskOptions = task.taskpool
    client = app.redis
    store = LimitStore(client, app.settings.keyspace)
    arguments = keys.bind(getattr(task, "taskpool_signature", None), args or (), kwargs or {})
    limit_names = list(limits.limit_names(options, arguments).values())
    sizes = store.get_many(limit_names) if limit_names else {}
    needs = limits.needs_of(
        options,
        node=f"eager@{socket.gethostname()}",
        limit_sizes=sizes,
        gpus=limits.gpu_count() if options.gpu_slots else 0,
        arguments=arguments,
    )
    rate_needs = rates.rate_needs_of(options, arguments)
    store_rates = Rates(client, app.settings.keyspace)
    while isinstance(refused := store_rates.take(rate_needs), RateRefusal):
        time.sleep(min(refused.wait, 1.0))
    owner = f"eager@{socket.gethostname()}:{os.getpid()}"
    held: list[tuple[Semaphore, Lease]] = []
    with LeaseKeeper() as keeper:
        try:
            for need in needs:
                sem = Semaphore(
                    client, need.name, need.capacity, app.settings.lease_ttl, keyspace=app.settings.keyspace
                )
                lease = sem.acquire(owner, need.count, task_id=task.request.id)
                held.append((sem, lease))
                keeper.add(sem, lease)
            yield [slot for sem, lease in held if kind_of(sem.name)[0] == GPU for slot in lease.slots]
        finally:
            for sem, lease in reversed(held):
                keeper.remove(lease)
                sem.release(lease)
