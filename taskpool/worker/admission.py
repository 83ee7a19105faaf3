"""Admission's consumer bootstep: it creates the gate, carries it across connection losses, reports it.

The gate itself (what waits, what is granted, the waiter thread) is :mod:`taskpool.worker.gate`;
the strategy that sends a task's requests through it is :mod:`taskpool.worker.strategy`
(also importable from here as :func:`strategy`, the path stored in older task classes).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import bootsteps

from taskpool.compat.celery import before_connection_loss
from taskpool.compat.kombu import close_task_channel, restore_messages
from taskpool.core.errors import ConfigurationError
from taskpool.worker import state
from taskpool.worker.batcher import members_of
from taskpool.worker.gate import Gate
from taskpool.worker.reach import state_redis
from taskpool.worker.strategy import strategy

__all__ = ["AdmissionStep", "refuse", "strategy", "waiting_count_of"]

logger = logging.getLogger("taskpool.admission")


def needs_gate(app: Any) -> bool:
    """Whether any task of ``app`` has limits or GPU slots (Celery builds a strategy for every task)."""
    return any(
        getattr(task, "taskpool", None) is not None and task.taskpool.has_limits
        for task in app.tasks.values()
    )


def refuse(app: Any, request: Any, exc: ConfigurationError) -> None:
    """End a request that can never be admitted: failed, with a dead letter to retry it later."""
    from celery.utils.serialization import get_pickleable_exception

    from taskpool.stores.dead_letters import DeadLetter

    try:
        app.dead_letters.add(
            DeadLetter.for_exception(
                exc,
                task=request.name,
                task_id=request.id,
                args=request.args,
                kwargs=request.kwargs,
                attempts=0,
                chain=list(request.request_dict.get("chain") or []),
            )
        )
    finally:
        request.task.backend.mark_as_failure(
            request.id, get_pickleable_exception(exc), request=request._context
        )
        request.acknowledge()


def waiting_count_of(worker: Any) -> int:
    """Requests held by the admission gate of ``worker`` (a Celery ``WorkController``), 0 without one.

    They are in Celery's ``reserved_requests`` too (reserved, not yet in the pool).
    """
    gate = state.gate_of(getattr(worker, "consumer", None))
    return gate.waiting_count() if gate is not None else 0


def _delivery_tags(requests: list[Any]) -> list[str]:
    """The delivery tags behind ``requests`` (a batch has one per input)."""
    return [
        tag
        for request in requests
        for member in members_of(request)
        if (tag := getattr(getattr(member, "message", None), "delivery_tag", None)) is not None
    ]


class AdmissionStep(bootsteps.StartStopStep):
    """Consumer bootstep: owns the admission gate (``consumer.taskpool_gate``).

    - ``create``: the :class:`~taskpool.worker.gate.Gate`, when a task of the app has limits or
      GPU slots (else ``None``); ``start``: its threads, on the consumer's thread.
    - At a connection loss (the consumer's blueprint ``stop`` before it reconnects) the gate
      forgets the requests it holds and gives back their leases; at the reconnect (``start``)
      their messages go back on the queue. At shutdown it gives back every slot.
    - Wraps the consumer's ``on_connection_error_after_connected`` to close the task channel
      safely first (see :func:`~taskpool.compat.kombu.close_task_channel`).
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        state.set_gate(parent, None)
        self._to_restore: list[str] = []  # delivery tags of requests dropped at a connection loss
        before_connection_loss(
            parent,
            "admission",
            lambda: close_task_channel(parent),
            "could not close the task channel after a connection loss",
        )

    def create(self, c: Any) -> None:
        app = c.app
        if needs_gate(app):
            client = state_redis(app)
            gate = Gate(app, c, client, app.settings.lease_ttl, on_refused=functools.partial(refuse, app))
            state.set_gate(c, gate)

    def start(self, c: Any) -> None:
        gate = state.gate_of(c)
        if gate is not None:
            gate.start()
        # kombu restores unacked messages when the old channel closes, but after a Redis restart
        # that happens while Redis is still down and fails, leaving them in the unacked hash until
        # visibility_timeout. The new channel restores them by tag (a no-op for a restored one,
        # and none for one another worker holds now: see restore_held).
        tags, self._to_restore = self._to_restore, []
        keeper = state.deliveries_of(c)
        restored = restore_messages(c, tags, keeper.hooks if keeper is not None else None)
        if restored:
            logger.info("taskpool: %d held message(s) put back on the queue after reconnecting", restored)

    def stop(self, c: Any) -> None:
        gate = state.gate_of(c)
        if gate is None:
            return
        dropped = gate.connection_lost()
        self._to_restore += _delivery_tags(dropped)
        if dropped:
            logger.warning(
                "taskpool: consumer restarting or stopping: "
                "%d request(s) waiting for limits go back to the queue",
                len(dropped),
            )

    def info(self, c: Any) -> dict[str, Any]:
        gate = state.gate_of(c)
        return {"taskpool_admission": gate.info()} if gate is not None else {}

    def shutdown(self, c: Any) -> None:
        gate = state.gate_of(c)
        if gate is not None:
            gate.close()
