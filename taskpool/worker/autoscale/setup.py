"""At ``worker_init``: swap in taskpool's threads and prefork pools and turn the autoscaler on."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from celery.utils.imports import symbol_by_name

from taskpool.client.routing import pool_of_worker
from taskpool.core.policy import parse_bounds
from taskpool.worker.autoscale.autoscaler import CallbackAutoscaler
from taskpool.worker.autoscale.config import MAX_CONCURRENCY, AutoscaleConfig, WorkerSetup

if TYPE_CHECKING:
    from taskpool.client.app import TaskPool as App

logger = logging.getLogger("taskpool.autoscale")

CELERY_THREADS_POOL = "celery.concurrency.thread:TaskPool"
CELERY_SOLO_POOL = "celery.concurrency.solo:TaskPool"
CELERY_PREFORK_POOL = "celery.concurrency.prefork:TaskPool"
THREADS_POOL = "taskpool.worker.pools.threads:TaskPool"
PREFORK_POOL = "taskpool.worker.pools.prefork:TaskPool"


def configure_worker(app: App, worker: Any) -> None:
    """At ``worker_init``: swap in taskpool's threads and prefork pools, turn the autoscaler on.

    ``worker.options`` is the dict Celery later passes to the blueprint, so setting
    ``autoscale`` there creates the autoscaler as ``--autoscale`` would.
    """
    pool_cls = worker.pool_cls
    if isinstance(pool_cls, str):
        from celery import concurrency

        pool_cls = concurrency.get_implementation(pool_cls)
    path = f"{getattr(pool_cls, '__module__', '')}:{getattr(pool_cls, '__qualname__', '')}"
    if path == CELERY_THREADS_POOL:
        pool_cls = worker.pool_cls = symbol_by_name(THREADS_POOL)
    if path == CELERY_PREFORK_POOL:  # notices a killed child at once (see taskpool/worker/pools/prefork.py)
        pool_cls = worker.pool_cls = symbol_by_name(PREFORK_POOL)
    if path == CELERY_SOLO_POOL:
        worker.concurrency = 1  # what solo runs, whatever -c says (the banner showed the CPU count)
        return  # one task at a time by definition: nothing to scale
    try:
        scaler_cls = symbol_by_name(worker.autoscaler_cls)
    except Exception:
        return
    if not (isinstance(scaler_cls, type) and issubclass(scaler_cls, CallbackAutoscaler)):
        return  # the project chose its own autoscaler: leave Celery's switches alone
    pool = pool_of_worker(pool_cls)
    config = AutoscaleConfig.from_env(pool, conf=app.conf)
    modifier = app.concurrency_modifiers.get(pool)
    if modifier is None and config.modifier is not None:
        modifier = config.modifier if callable(config.modifier) else symbol_by_name(config.modifier)
    given = worker.options.get("autoscale")
    if given:
        high, low = parse_bounds(given)
        low = 0 if low is None else low  # Celery's meaning of --autoscale=N
    elif config.max is not None:
        high, low = config.max, config.min if config.min is not None else 1
    else:
        concurrency = worker.concurrency
        if not isinstance(concurrency, int):
            logger.warning("taskpool: worker_concurrency=%r: autoscaler off, set --autoscale", concurrency)
            return
        high, low = concurrency, (1 if modifier is not None else concurrency)
    ceiling = MAX_CONCURRENCY[pool]
    if high > ceiling:
        logger.warning(
            "taskpool: autoscale max %d is above the %s pool's ceiling; using %d (run more workers instead)",
            high,
            pool,
            ceiling,
        )
        high = ceiling
    low = max(1, min(low, high))
    worker.options["autoscale"] = [high, low]
    worker.taskpool_autoscale = WorkerSetup(app, replace(config, max=high, min=low), modifier)
