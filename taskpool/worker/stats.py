"""What a worker tells about itself: ``taskpool`` in ``inspect stats`` (Flower's worker page).

One snapshot, :func:`worker_snapshot`, read from the worker's main process: the taskpool pool it
serves, its concurrency (and the autoscaler's bounds and target), the queues it consumes, the
tasks in flight per task name, and the slots its requests hold or wait for. The consumer
bootstep :class:`StatsStep` adds it to ``inspect stats``, and beside it the same data shaped for
people as ``taskpool (readable)`` (:mod:`taskpool.worker.readable`); :mod:`taskpool.metrics`
exports the same snapshot to Prometheus.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from celery import bootsteps
from celery.worker import state as worker_state

from taskpool.core.errors import ConfigurationError
from taskpool.core.names import GPU, kind_of
from taskpool.core.settings import metrics_port
from taskpool.worker.state import gate_of

logger = logging.getLogger("taskpool.stats")

#: Entries of the gate's info that are not counters (the rest go to ``admission``).
_NOT_COUNTERS = ("owner", "held", "waiting", "bounds", "peers")


def _concurrency(consumer: Any) -> int | None:
    pool = getattr(consumer, "pool", None)
    try:
        return int(pool.num_processes) if pool is not None else None
    except (AttributeError, TypeError, ValueError):  # a pool not started yet has no processes
        return None


def _metrics_port() -> int | None:
    try:
        return metrics_port() or None
    except ConfigurationError:  # the metrics step logged it and serves nothing
        return None


def _per_task(requests: Any) -> dict[str, int]:
    return dict(sorted(Counter(r.name for r in list(requests)).items()))


def worker_snapshot(app: Any, consumer: Any) -> dict[str, Any]:
    """This worker as a JSON-able dict (the value of ``taskpool`` in ``inspect stats``).

    Keys: ``pool``, ``concurrency`` (processes, threads or greenlets now), ``min``, ``max``,
    ``target`` (the autoscaler's, when there is one), ``queues``, ``tasks`` (declared for this
    pool), ``in_flight`` and ``reserved`` (task name -> requests), ``slots_held`` and
    ``slots_waiting`` (semaphore -> slots held / requests waiting), ``holding`` (semaphore ->
    ``{"waiting": requests held for it, "next": those next in line}``, the rest being surplus
    that no other worker took, see :mod:`taskpool.worker.placement`), ``peers`` (other workers
    with a gate that this one sees), ``gpu_holders`` (GPU slot -> task id), ``admission`` (the
    gate's counters), ``metrics_port``.
    """
    pool = getattr(app, "worker_pool", None)
    active = _per_task(worker_state.active_requests)
    reserved = Counter(_per_task(worker_state.reserved_requests))
    reserved.subtract(active)  # reserved_requests includes the running ones
    snapshot: dict[str, Any] = {
        "pool": pool,
        "concurrency": _concurrency(consumer),
        "min": None,
        "max": None,
        "target": None,
        "queues": sorted(getattr(app.amqp.queues, "consume_from", None) or ()),
        "tasks": sorted(
            name
            for name, task in app.tasks.items()
            if getattr(task, "taskpool", None) is not None and task.taskpool.pool == pool
        ),
        "in_flight": active,
        "reserved": {k: v for k, v in sorted(reserved.items()) if v > 0},
        "slots_held": {},
        "slots_waiting": {},
        "holding": {},
        "peers": 0,
        "gpu_holders": {},
        "admission": {},
        "metrics_port": _metrics_port(),
    }
    scaler = getattr(getattr(consumer, "controller", None), "autoscaler", None)
    if scaler is not None and hasattr(scaler, "info"):
        info = scaler.info()
        snapshot["concurrency"] = info.get("current", snapshot["concurrency"])
        snapshot.update({k: info.get(k) for k in ("min", "max", "target")})
        if snapshot["target"] is None:  # Celery's own autoscaler has no target
            snapshot["target"] = info.get("qty")
    gate = gate_of(consumer)  # None on a worker whose app has no task with limits
    if gate is not None:
        info = gate.info()
        held: Counter[str] = Counter()
        for request_id, leases in info.get("held", {}).items():
            for name, slots, _fence in leases:
                held[name] += len(slots)
                if kind_of(name)[0] == GPU:
                    for slot in slots:
                        snapshot["gpu_holders"][f"{name}/{slot}"] = request_id
        waiting: Counter[str] = Counter()
        for _request_id, _task, names in info.get("waiting", []):
            waiting.update(names)
        snapshot["slots_held"] = dict(sorted(held.items()))
        snapshot["slots_waiting"] = dict(sorted(waiting.items()))
        bounds = info.get("bounds", {})
        snapshot["holding"] = {
            name: {"waiting": n, "next": min(n, int(bounds.get(name, n)))}
            for name, n in sorted(waiting.items())
        }
        snapshot["peers"] = int(info.get("peers", 0))
        snapshot["waits"] = info.get("waits", [])  # per task and reason (taskpool.worker.waits)
        snapshot["wait_seconds"] = info.get("wait_seconds", {})
        snapshot["admission"] = {
            k: v for k, v in info.items() if k not in _NOT_COUNTERS and isinstance(v, int)
        }
    return snapshot


class StatsStep(bootsteps.StartStopStep):
    """Consumer bootstep: adds :func:`worker_snapshot` to ``inspect stats`` as ``taskpool``.

    A StartStopStep with nothing to start: only those are in ``consumer.steps``, whose
    ``info`` makes up ``inspect stats``.
    """

    label = "taskpool stats"

    def info(self, c: Any) -> dict[str, Any]:
        snapshot = worker_snapshot(c.app, c)
        return {"taskpool": snapshot, READABLE_KEY: readable_snapshot(c, snapshot)}


#: The key of the snapshot shaped for people (:mod:`taskpool.worker.readable`) in ``inspect stats``.
READABLE_KEY = "taskpool (readable)"


def readable_snapshot(consumer: Any, snapshot: dict[str, Any]) -> dict[str, Any]:
    """``snapshot`` with the autoscaler's decisions and the gate's waiters, for people."""
    from taskpool.worker.readable import readable

    try:
        scaler = getattr(getattr(consumer, "controller", None), "autoscaler", None)
        gate = gate_of(consumer)
        return readable(
            snapshot,
            scaler.info() if scaler is not None and hasattr(scaler, "info") else None,
            gate.info() if gate is not None else None,
        )
    except Exception as exc:  # stats must answer even if a part cannot be shaped
        logger.exception("taskpool: readable stats failed")
        return {"error": f"{type(exc).__name__}: {exc}"}
