"""The worker's side of the fleet: its report (what it holds, its capacity) and the drain.

:class:`FleetStep` (a consumer bootstep) starts a :class:`FleetReporter` thread that publishes this
worker's report to Redis (:class:`~taskpool.stores.fleet.FleetStore`) twice a second: requests
reserved (prefetched, not started), held by the admission gate or a batcher, running, and its
capacity (pool slots). The fleet controller (:mod:`taskpool.ops.fleet`) sums the reports with the
queues' depth.

The drain (the ``taskpool_drain`` remote control command, sent by the controller or by
``taskpool drain`` in a Kubernetes ``preStop`` hook): the worker cancels its task consumer (as
``celery control cancel_consumer`` does: it takes no new message), finishes everything it already
received, and once it holds nothing it sends itself SIGTERM: Celery's warm shutdown, exit code 0.
Messages that reach it after the cancel are rejected back to their queue by kombu.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from celery import bootsteps
from celery.worker import state as worker_state
from celery.worker.control import control_command, ok

from taskpool.stores.fleet import REPORT_TTL, FleetStore
from taskpool.worker import state
from taskpool.worker.reach import state_redis

logger = logging.getLogger("taskpool.fleet")

#: Seconds between two reports of a worker.
REPORT_EVERY = 0.5


def _capacity(consumer: Any) -> int:
    try:
        return int(consumer.pool.num_processes)
    except (AttributeError, TypeError, ValueError):  # a pool not started yet has no processes
        return int(getattr(getattr(consumer, "controller", None), "concurrency", 0) or 0)


class FleetReporter:
    """Publishes one worker's report; drains it on request.

    Args:
        consumer: the worker's consumer (Celery's ``Consumer``).
        store: the fleet's store.
        node: this worker's node name.
        pool: the taskpool pool it serves.
    """

    def __init__(self, consumer: Any, store: FleetStore, node: str, pool: str | None) -> None:
        self.consumer = consumer
        self.store = store
        self.node = node
        self.pool = pool
        self.draining = False
        self.drain_started: float | None = None
        self.idle_since: float | None = time.time()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._exiting = False

    # -- what it holds -------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """``running``, ``reserved`` (received, not started, not held) and ``held`` (by the gate
        or a batcher); ``reserved_requests`` counts all three."""
        running = len(worker_state.active_requests)
        total = len(worker_state.reserved_requests)
        held = 0
        gate = state.gate_of(self.consumer)
        if gate is not None:
            held += len(gate.info().get("waiting", ()))
        for batcher in list(state.batchers_of(self.consumer).values()):
            held += batcher.buffered()
        return {"running": running, "held": held, "reserved": max(0, total - running - held)}

    def report(self) -> dict[str, Any]:
        counts = self.counts()
        busy = sum(counts.values())
        now = time.time()
        if busy:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now
        return {
            "node": self.node,
            "pool": self.pool,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "capacity": _capacity(self.consumer),
            **counts,
            "busy": busy,
            "idle_since": self.idle_since,
            "draining": self.draining,
            "at": now,
        }

    # -- the thread ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="taskpool-fleet", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                report = self.report()
                self.store.publish_report(self.node, report, ttl=REPORT_TTL)
                if self.draining and report["busy"] == 0 and not self._exiting:
                    self._exit()
            except Exception:  # Redis away, a pool not ready: report again at the next tick
                logger.debug("taskpool: fleet report failed", exc_info=True)
            self._stopping.wait(REPORT_EVERY)

    def _exit(self) -> None:
        self._exiting = True
        held = time.monotonic() - (self.drain_started or time.monotonic())
        logger.info("taskpool: drained in %.1f s, holding nothing: warm shutdown", held)
        os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown, as `kill -TERM` or Kubernetes

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(2)
        try:
            self.store.withdraw_report(self.node)
        except Exception:
            logger.debug("taskpool: fleet report not withdrawn", exc_info=True)

    # -- drain (in the consumer's thread) ------------------------------------------------------
    def drain(self) -> None:
        """Stop consuming every task queue; the reporter exits once nothing is held."""
        if self.draining:
            return
        self.draining = True
        self.drain_started = time.monotonic()
        task_consumer = getattr(self.consumer, "task_consumer", None)
        names = [q.name for q in getattr(task_consumer, "queues", None) or ()]
        for name in names:
            self.consumer.cancel_task_queue(name)
        logger.info("taskpool: draining: stopped consuming %s", ", ".join(names) or "(no queue)")


class FleetStep(bootsteps.StartStopStep):
    """Consumer bootstep: owns the fleet reporter (``consumer.taskpool_fleet``)."""

    label = "taskpool fleet"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        state.set_fleet(parent, None)

    def start(self, c: Any) -> None:
        reporter = state.fleet_of(c)
        if reporter is None:
            app = c.app
            store = FleetStore(state_redis(app), app.settings.keyspace)
            reporter = FleetReporter(c, store, c.hostname, getattr(app, "worker_pool", None))
            state.set_fleet(c, reporter)
        reporter.start()

    def info(self, c: Any) -> dict[str, Any]:
        """``taskpool_fleet`` in ``inspect stats`` (Flower's worker page, "Other" tab): this
        worker's report and its pool's last fleet decision (desired, live, reason)."""
        reporter = state.fleet_of(c)
        if reporter is None:
            return {}
        out: dict[str, Any] = {"report": reporter.report(), "pool_decision": None}
        try:
            decision = reporter.store.desired().get(reporter.pool or "")
        except Exception:  # Redis away: the report alone
            decision = None
        if decision is not None:
            out["pool_decision"] = {k: decision.get(k) for k in ("desired", "live", "reason", "at")}
        return {"taskpool_fleet": out}

    def shutdown(self, c: Any) -> None:
        reporter = state.fleet_of(c)
        if reporter is not None:
            reporter.stop()


@control_command(signature="")
def taskpool_drain(worker: Any, **_: Any) -> Any:
    """Stop consuming, finish what this worker holds, then exit (the fleet's scale-down)."""
    reporter = state.fleet_of(worker.consumer)
    if reporter is None:
        return {"error": "no fleet reporter on this worker"}
    worker.consumer.call_soon(reporter.drain)
    return ok(f"{reporter.node}: draining")
