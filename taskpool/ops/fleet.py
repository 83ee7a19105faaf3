"""The fleet controller: how many workers each pool runs, from the work that exists.

Each tick (default every 0.5 s) and for each pool, the controller reads

* the pool's policy from Redis (:class:`~taskpool.stores.fleet.FleetStore`, changed at runtime by
  ``taskpool scale --fleet``, so every replica of the controller agrees),
* the signal: messages queued in Redis (every priority sub-queue of the pool's queues) plus what
  the workers report (:mod:`taskpool.worker.fleet`): reserved (prefetched), held by the gate or a
  batcher, running, and the live workers' capacity,

asks :class:`~taskpool.core.fleet.FleetScaler` for the desired count, stores the decision, and
exports it: the Prometheus gauge ``taskpool_fleet_desired_workers{pool}`` on ``/metrics`` and a
JSON document for KEDA's ``metrics-api`` scaler on ``/keda`` (``{"threads": {"desired": 3, ...}}``).

On Kubernetes the controller only decides; KEDA scales each pool's Deployment to the desired
count. Locally (``taskpool up --fleet``) it also acts, over :class:`LocalWorkers` (one
`celery worker` process per replica): it starts workers up to the desired count, and to shrink it
drains the workers :func:`~taskpool.core.fleet.pick_to_drain` chooses (never a busy one while an
idle one exists): they stop consuming, finish what they hold, and exit.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from taskpool.core import names
from taskpool.core.fleet import (
    FleetDecision,
    FleetPolicy,
    FleetScaler,
    FleetSignal,
    WorkerLoad,
    pick_to_drain,
)
from taskpool.ops.launcher import Child, launch
from taskpool.ops.stack import worker_argv
from taskpool.stores.fleet import FleetStore
from taskpool.stores.queues import queue_depths

logger = logging.getLogger("taskpool.fleet")

#: Seconds between two looks of the controller.
TICK = 0.5
#: Seconds a drained worker may take to finish what it holds before it gets SIGTERM.
DRAIN_TIMEOUT = 300.0


@dataclass
class LocalWorker:
    node: str
    pool: str
    child: Child
    started: float
    drain_sent: float | None = None
    terminated: bool = False


@dataclass
class LocalWorkers:
    """`celery worker` processes on this machine, one per replica of a pool.

    Args:
        app_path: the app (``-A``).
        broker_url: the Redis every worker uses.
        log_dir: each worker's log goes to ``<log_dir>/<pool>-<n>.log``.
        concurrency: pool -> ``-c`` of each worker (default: taskpool's per pool).
        env: the environment of the workers (default: this process's).
        extra_args: more `celery worker` arguments.
    """

    app_path: str
    broker_url: str
    log_dir: Path
    concurrency: Mapping[str, int] = field(default_factory=dict)
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    extra_args: tuple[str, ...] = ("--without-mingle", "--without-gossip")
    loglevel: str = "INFO"
    workers: dict[str, LocalWorker] = field(default_factory=dict)
    exited: list[tuple[str, int | None]] = field(default_factory=list)
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def start(self, pool: str) -> str:
        """Start one more worker of ``pool``; returns its node name."""
        n = next(self._numbers)
        node = f"{pool}-{n}@{socket.gethostname()}"
        argv = worker_argv(self.app_path, pool, self.concurrency.get(pool), self.loglevel, node)
        argv += list(self.extra_args)
        child = launch(
            argv,
            broker_url=self.broker_url,
            env=self.env,
            cwd=self.cwd,
            output=self.log_dir / f"{pool}-{n}.log",
        )
        self.workers[node] = LocalWorker(node, pool, child, time.monotonic())
        return node

    def of(self, pool: str) -> list[LocalWorker]:
        return [w for w in self.workers.values() if w.pool == pool]

    def reap(self) -> list[tuple[str, int | None]]:
        """Forget the workers that exited; returns (node, exit code) of each."""
        gone = [(node, w.child.poll()) for node, w in self.workers.items() if w.child.poll() is not None]
        for node, _code in gone:
            del self.workers[node]
        self.exited += gone
        return gone

    def stop_all(self, timeout: float = 60.0) -> dict[str, int | None]:
        """Warm shutdown of every worker at once; SIGKILL after ``timeout`` seconds. A worker
        already draining is only waited for: it exits by itself, and a second SIGTERM during
        Celery's warm shutdown would kill it (Celery restores the default handler)."""
        for w in self.workers.values():
            if w.drain_sent is None or w.terminated:
                w.child.terminate()
        codes: dict[str, int | None] = {node: w.child.wait(timeout) for node, w in self.workers.items()}
        self.workers.clear()
        return codes


class FleetController:
    """Desired workers per pool, exported; applied to :class:`LocalWorkers` when given.

    Args:
        app: the TaskPool app (its Redis, keyspace, queues and control).
        pools: the pools to scale.
        defaults: pool -> the policy stored when Redis holds none (a stored one wins).
        workers: local worker processes to start and drain; None: decide and export only.
        slots: pool -> slots per worker, until a worker reports its capacity.
        clock: monotonic seconds (tests).
    """

    def __init__(
        self,
        app: Any,
        pools: Iterable[str],
        *,
        defaults: Mapping[str, FleetPolicy] | None = None,
        workers: LocalWorkers | None = None,
        slots: Mapping[str, int] | None = None,
        drain_timeout: float = DRAIN_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.pools = list(pools)
        self.store = FleetStore(app.redis, app.settings.keyspace)
        self.workers = workers
        self.slots = dict(slots or {})
        self.drain_timeout = drain_timeout
        self.scaler = FleetScaler(clock=clock)
        self.defaults = {p: (defaults or {}).get(p) or FleetPolicy(p) for p in self.pools}
        for policy in self.defaults.values():
            self.store.seed_policy(policy)
        self.decisions: dict[str, FleetDecision] = {}
        self.signals: dict[str, FleetSignal] = {}
        self._policies: dict[str, FleetPolicy] = {}
        self._keyprefix = names.queue_keyprefix(app.conf.broker_transport_options)
        self.registry = CollectorRegistry()
        self.desired_gauge = Gauge(
            "taskpool_fleet_desired_workers", "Workers the pool should run", ["pool"], registry=self.registry
        )
        self.live_gauge = Gauge(
            "taskpool_fleet_live_workers",
            "Workers of the pool that consume",
            ["pool"],
            registry=self.registry,
        )
        self.work_gauge = Gauge(
            "taskpool_fleet_work",
            "The pool's work: queued, reserved, held, running",
            ["pool", "part"],
            registry=self.registry,
        )
        self.capacity_gauge = Gauge(
            "taskpool_fleet_capacity_slots",
            "Slots of the pool's live workers",
            ["pool"],
            registry=self.registry,
        )
        self._lock = threading.Lock()

    # -- measuring -----------------------------------------------------------------------------
    def queues_of(self, pool: str) -> list[str]:
        return [self.app.settings.queue_for(pool), self.app.settings.queue_for(pool, gpu=True)]

    def measure(self, reports: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[FleetSignal, int]]:
        """pool -> (its signal, slots per worker)."""
        queues = {p: self.queues_of(p) for p in self.pools}
        depths = queue_depths(
            self.app.broker_redis, [q for qs in queues.values() for q in qs], keyprefix=self._keyprefix
        )
        out = {}
        for pool in self.pools:
            mine = [r for r in reports.values() if r.get("pool") == pool]
            serving = [r for r in mine if not r.get("draining")]
            capacity = sum(int(r.get("capacity") or 0) for r in serving)
            local = self.workers.of(pool) if self.workers is not None else None
            live = len([w for w in local if w.drain_sent is None]) if local is not None else len(serving)
            signal = FleetSignal(
                pool,
                queued=sum(depths.get(q, 0) for q in queues[pool]),
                reserved=sum(int(r.get("reserved") or 0) for r in mine),
                held=sum(int(r.get("held") or 0) for r in mine),
                running=sum(int(r.get("running") or 0) for r in mine),
                capacity=capacity,
                live=live,
                draining=len(mine) - len(serving),
            )
            per_worker = round(capacity / len(serving)) if serving and capacity else self.slots.get(pool, 1)
            out[pool] = (signal, per_worker)
        return out

    # -- one look ------------------------------------------------------------------------------
    def tick(self) -> dict[str, FleetDecision]:
        """Measure, decide, store, export and (with local workers) act, once for every pool."""
        with self._lock:
            reports = self.store.reports()
            if self.workers is not None:
                for node, code in self.workers.reap():
                    pool = node.partition("-")[0]
                    self.store.note(pool, f"{node} exited with {code}", time.time())
            for pool, (signal, per_worker) in self.measure(reports).items():
                policy = self.store.policy(pool) or self.defaults[pool]
                if self._policies.get(pool) not in (None, policy):
                    self.scaler.forget(pool)  # a runtime change applies at once
                self._policies[pool] = policy
                decision = self.scaler.decide(policy, signal, per_worker)
                previous = self.decisions.get(pool)
                changed = previous is None or previous.desired != decision.desired
                self.store.record(decision, signal, log=changed)
                self.decisions[pool], self.signals[pool] = decision, signal
                self._export(decision, signal)
                if self.workers is not None:
                    self._apply(pool, decision, reports)
            return dict(self.decisions)

    def _export(self, decision: FleetDecision, signal: FleetSignal) -> None:
        pool = decision.pool
        self.desired_gauge.labels(pool).set(decision.desired)
        self.live_gauge.labels(pool).set(signal.live)
        self.capacity_gauge.labels(pool).set(signal.capacity)
        for part in ("queued", "reserved", "held", "running"):
            self.work_gauge.labels(pool, part).set(getattr(signal, part))

    def _apply(self, pool: str, decision: FleetDecision, reports: Mapping[str, Mapping[str, Any]]) -> None:
        assert self.workers is not None
        mine = self.workers.of(pool)
        serving = [w for w in mine if w.drain_sent is None]
        now = time.monotonic()
        for w in mine:  # a drain that takes too long: warm shutdown (running tasks still finish)
            if w.drain_sent is not None and not w.terminated and now - w.drain_sent > self.drain_timeout:
                w.terminated = True
                w.child.terminate()
        if decision.desired > len(serving):
            for _ in range(decision.desired - len(serving)):
                node = self.workers.start(pool)
                self.store.note(pool, f"started {node}: {decision.reason}", time.time())
        elif decision.desired < len(serving):
            # Only workers that report can be drained (one still starting has no consumer yet).
            loads = [
                WorkerLoad(w.node, int(reports[w.node].get("busy") or 0), reports[w.node].get("idle_since"))
                for w in serving
                if w.node in reports
            ]
            for node in pick_to_drain(loads, len(serving) - decision.desired):
                self.drain(node)
                busy = next(x.busy for x in loads if x.node == node)
                self.store.note(pool, f"draining {node} (holding {busy}): {decision.reason}", time.time())

    def drain(self, node: str) -> None:
        """Tell ``node`` to stop consuming, finish what it holds and exit."""
        if self.workers is not None and node in self.workers.workers:
            self.workers.workers[node].drain_sent = time.monotonic()
        self.app.control.broadcast("taskpool_drain", destination=[node], reply=False)

    # -- running -------------------------------------------------------------------------------
    def run(self, stop: threading.Event, interval: float = TICK) -> None:
        """Tick every ``interval`` seconds until ``stop`` is set; a failed look is logged, not fatal."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                logger.exception("taskpool: fleet controller tick failed")
            stop.wait(interval)

    def keda_document(self) -> dict[str, Any]:
        """What ``/keda`` serves: pool -> desired, live, work, capacity."""
        return {
            pool: {
                "desired": d.desired,
                "live": d.live,
                "work": self.signals[pool].work,
                "capacity": self.signals[pool].capacity,
            }
            for pool, d in sorted(self.decisions.items())
        }

    def serve(self, port: int, address: str = "0.0.0.0") -> ThreadingHTTPServer:
        """Serve ``/metrics`` (Prometheus) and ``/keda`` (KEDA metrics-api JSON) in a thread."""
        controller = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].rstrip("/")
                if path == "/metrics":
                    body, kind = generate_latest(controller.registry), CONTENT_TYPE_LATEST
                elif path == "/keda" or path.startswith("/keda/"):
                    doc = controller.keda_document()
                    pool = path[len("/keda/") :] if path.startswith("/keda/") else ""
                    if pool and pool not in doc:
                        self.send_error(404, f"no pool {pool!r}")
                        return
                    body, kind = json.dumps(doc[pool] if pool else doc).encode(), "application/json"
                elif path in ("", "/healthz"):
                    body, kind = b"ok\n", "text/plain"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer((address, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="taskpool-fleet-http", daemon=True).start()
        return server


@contextlib.contextmanager
def running(controller: FleetController, interval: float = TICK) -> Any:
    """The controller ticking in a thread for the ``with`` block."""
    stop = threading.Event()
    thread = threading.Thread(
        target=controller.run, args=(stop, interval), name="taskpool-fleet", daemon=True
    )
    thread.start()
    try:
        yield controller
    finally:
        stop.set()
        thread.join(10)
