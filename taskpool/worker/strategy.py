"""The task strategy of every taskpool task with limits, GPU slots or ``batch``.

Celery builds one strategy per task when its consumer starts (the task attribute ``Strategy``,
a dotted path set by :class:`taskpool.client.app.TaskPool`); the strategy turns each message
into a ``Request`` and hands it to the consumer's ``on_task_request``. :func:`strategy` is
Celery's default strategy over a view of the consumer that composes taskpool's two features
from the task's options:

=============  ==========================================================================
options        a request goes
=============  ==========================================================================
limits         to the admission gate, which hands it to the pool when its slots are granted
batch          to the task's batcher, whose flushes go to the pool as one job each
both           to the batcher, whose flushes pass the gate (a batch takes its slots once)
=============  ==========================================================================

The gate and the batchers belong to their consumer bootsteps
(:class:`~taskpool.worker.admission.AdmissionStep`,
:class:`~taskpool.worker.batching.BatchingStep`); the strategy only looks them up.
"""

from __future__ import annotations

from typing import Any

from celery.worker.strategy import default

from taskpool.worker import state
from taskpool.worker.batcher import Batcher
from taskpool.worker.gate import View


def strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Celery's default strategy over ``consumer`` as the task's options want it seen."""
    options = task.taskpool
    target = consumer  # where requests (or a batcher's flushes) go: the pool, or the gate first
    if options.has_limits:
        gate = state.gate_of(consumer)
        if gate is None:
            raise RuntimeError(
                f"task {task.name!r} has limits but the worker's consumer has no admission gate: "
                "taskpool's AdmissionStep creates one when the app declares such tasks "
                "(was the task declared after the worker started?)"
            )
        target = gate.view()
    if options.batch is not None:
        batcher = Batcher(task, consumer, target.pool.apply_async, target.on_task_request)
        state.register_batcher(consumer, batcher)
        target = View(consumer, on_task_request=batcher.add, apply_eta_task=batcher.add_eta)
    return default(task, app, target, **kwargs)
