"""Batching's consumer bootstep: it owns the batchers, carries them across connection losses, reports them.

The batcher (collecting, flushing, prefetch loans) is :mod:`taskpool.worker.batcher`; the
strategy that hands a task's requests to it is :mod:`taskpool.worker.strategy` (also importable
from here as :func:`strategy`, the path stored in older task classes).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from taskpool.compat.kombu import restore_messages
from taskpool.worker import state
from taskpool.worker.strategy import strategy

__all__ = ["BatchingStep", "batch_discount", "strategy"]

logger = logging.getLogger("taskpool.batching")


def batch_discount(worker: Any, incoming: Any = None) -> tuple[int, int]:
    """How many of Celery's active and reserved requests are batch inputs beyond the first of
    each batch: a batch takes one pool slot, so the autoscaler counts it once.

    Returns ``(active, reserved)`` to subtract from ``len(active_requests)`` and the reserved
    count; ``(0, 0)`` on a worker without batched tasks. ``incoming``: a request Celery has
    reserved but not yet handed to its batcher (the autoscaler hears of messages in between).
    """
    active = reserved = 0
    for batcher in state.batchers_of(getattr(worker, "consumer", None)).values():
        a, r = batcher.discount(1 if getattr(incoming, "name", None) == batcher.task.name else 0)
        active += a
        reserved += r
    return active, reserved


class BatchingStep(bootsteps.StartStopStep):
    """Consumer bootstep: owns the batchers (``consumer.taskpool_batchers``, task name -> batcher).

    ``create`` makes the (empty) table; each batched task's strategy puts its batcher there when
    the consumer builds its strategies (at every connection). At a connection loss the batchers
    drop the requests they buffer, whose messages go back on the queue at the reconnect.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._to_restore: list[str] = []  # delivery tags of inputs dropped at a connection loss

    def create(self, c: Any) -> None:
        state.set_batchers(c, {})

    def start(self, c: Any) -> None:
        tags, self._to_restore = self._to_restore, []
        keeper = state.deliveries_of(c)
        restored = restore_messages(c, tags, keeper.hooks if keeper is not None else None)
        if restored:
            logger.info(
                "taskpool: %d buffered batch input(s) put back on the queue after reconnecting", restored
            )

    def stop(self, c: Any) -> None:
        dropped = [r for b in state.batchers_of(c).values() for r in b.connection_lost()]
        self._to_restore += [
            t
            for r in dropped
            if (t := getattr(getattr(r, "message", None), "delivery_tag", None)) is not None
        ]
        if dropped:
            logger.warning(
                "taskpool: consumer restarting or stopping: %d buffered batch input(s) go back to the queue",
                len(dropped),
            )

    def info(self, c: Any) -> dict[str, Any]:
        batchers = state.batchers_of(c)
        return {"taskpool_batches": {name: b.info() for name, b in batchers.items()}} if batchers else {}
