"""Prometheus metrics of a worker, served by its main process (prometheus-client).

``TASKPOOL_METRICS_PORT=9808`` turns them on (0 or unset: off), on ``TASKPOOL_METRICS_ADDRESS``
(default 127.0.0.1; 0.0.0.0 in a container). Run several workers on one host on different ports.

Two sources:

- Counted where tasks run (signals): ``taskpool_tasks_started_total``,
  ``taskpool_tasks_finished_total{state}``, ``taskpool_task_retries_total``,
  ``taskpool_dead_letters_total`` and ``taskpool_task_duration_seconds``, per task. Prefork
  children run the tasks, so counters use prometheus-client's multiprocess mode: each process
  writes its own file in a folder of the worker's, and the main process adds them up at scrape.
- Read at scrape time in the main process (:func:`taskpool.stats.worker_snapshot`): pool size
  and the autoscaler's bounds and target, requests in flight and reserved per task, slots held
  and requests waiting per semaphore (limits, in-flight caps, GPU slots), the depth of each queue
  the worker consumes, the admission gate's counters, and ``taskpool_wait_seconds{reason}``: how
  long admitted requests waited in the gate, by the kind of what they waited for
  (:mod:`taskpool.worker.waits`). A task or semaphore seen once stays in the output at 0, so a
  graph drops to 0 instead of ending.

:data:`METRICS` lists every metric by name (what Grafana's dashboard may query).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from celery import bootsteps, signals

from taskpool.core.names import queue_keyprefix
from taskpool.core.settings import metrics_address, metrics_port
from taskpool.stores.queues import queue_depths
from taskpool.worker.stats import worker_snapshot

logger = logging.getLogger("taskpool.metrics")

#: The admission gate's counters, exported as ``taskpool_admission_<name>_total{pool}``.
ADMISSION_COUNTERS = (
    "admitted", "waited", "released", "failed_admission", "lost_leases",
    "handed_back", "reoffered", "kept", "dropped_at_reconnect",
)  # fmt: skip

#: Every metric a worker exports: name -> (type, labels). A scrape shows counters with
#: ``_total`` and histograms as ``_bucket``, ``_sum`` and ``_count`` (:func:`series_names`).
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "taskpool_tasks_started": ("counter", ("task",)),
    "taskpool_tasks_finished": ("counter", ("task", "state")),
    "taskpool_task_retries": ("counter", ("task",)),
    "taskpool_dead_letters": ("counter", ("task",)),
    "taskpool_task_duration_seconds": ("histogram", ("task",)),
    "taskpool_pool_processes": ("gauge", ("pool",)),
    "taskpool_pool_min_processes": ("gauge", ("pool",)),
    "taskpool_pool_max_processes": ("gauge", ("pool",)),
    "taskpool_autoscaler_target": ("gauge", ("pool",)),
    "taskpool_tasks_active": ("gauge", ("task",)),
    "taskpool_tasks_reserved": ("gauge", ("task",)),
    "taskpool_slots_held": ("gauge", ("semaphore",)),
    "taskpool_slot_waiters": ("gauge", ("semaphore",)),
    "taskpool_queue_depth": ("gauge", ("queue",)),
    "taskpool_wait_seconds": ("histogram", ("reason",)),
    **{f"taskpool_admission_{name}": ("counter", ("pool",)) for name in ADMISSION_COUNTERS},
}

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def series_names() -> set[str]:
    """The names a scrape of a worker shows (``taskpool_tasks_started_total``, ...)."""
    return {name + suffix for name, (kind, _) in METRICS.items() for suffix in _SUFFIXES[kind]}


_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class TaskCounters:
    """Per-task counters, incremented by Celery's task signals wherever the task runs."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        # registry=None: the serving registry reads every process's values from the
        # multiprocess folder; registering here too would count the main process twice.
        self.started = Counter("taskpool_tasks_started", "Task executions started.", ["task"], registry=None)
        self.finished = Counter(
            "taskpool_tasks_finished",
            "Task executions finished, by state (SUCCESS, FAILURE, RETRY, ...).",
            ["task", "state"],
            registry=None,
        )
        self.retries = Counter(
            "taskpool_task_retries", "Failed attempts sent back for a retry.", ["task"], registry=None
        )
        self.dead_letters = Counter(
            "taskpool_dead_letters", "Tasks that failed after their last attempt.", ["task"], registry=None
        )
        self.duration = Histogram(
            "taskpool_task_duration_seconds", "Run time of task executions.", ["task"], registry=None
        )
        self._started_at: dict[str, float] = {}

    def connect(self) -> None:
        signals.task_prerun.connect(self._on_prerun, weak=False)
        signals.task_postrun.connect(self._on_postrun, weak=False)
        signals.task_retry.connect(self._on_retry, weak=False)
        signals.task_failure.connect(self._on_failure, weak=False)

    def disconnect(self) -> None:
        signals.task_prerun.disconnect(self._on_prerun)
        signals.task_postrun.disconnect(self._on_postrun)
        signals.task_retry.disconnect(self._on_retry)
        signals.task_failure.disconnect(self._on_failure)

    def _on_prerun(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        name = getattr(sender, "name", "?")
        self.started.labels(name).inc()
        if task_id:
            self._started_at[task_id] = time.monotonic()

    def _on_postrun(
        self, sender: Any = None, task_id: str | None = None, state: str | None = None, **_: Any
    ) -> None:
        name = getattr(sender, "name", "?")
        self.finished.labels(name, state or "UNKNOWN").inc()
        started = self._started_at.pop(task_id or "", None)
        if started is not None:
            self.duration.labels(name).observe(time.monotonic() - started)

    def _on_retry(self, sender: Any = None, **_: Any) -> None:
        self.retries.labels(getattr(sender, "name", "?")).inc()

    def _on_failure(self, sender: Any = None, **_: Any) -> None:
        # A taskpool task fails for good only after writing its dead letter (taskpool.task).
        if getattr(sender, "taskpool", None) is not None:
            self.dead_letters.labels(sender.name).inc()


class WorkerCollector:
    """Gauges read from the worker's main process at each scrape."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        #: Labels seen in earlier scrapes, per metric: reported at 0 once they are gone.
        self._seen: dict[str, set[str]] = {}

    def _with_zeros(self, metric: str, values: dict[str, int]) -> dict[str, int]:
        seen = self._seen.setdefault(metric, set())
        seen.update(values)
        return {label: values.get(label, 0) for label in sorted(seen)}

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        consumer = getattr(self.worker, "consumer", None)
        if consumer is None:
            return
        snap = worker_snapshot(self.worker.app, consumer)
        pool = snap["pool"] or "?"
        for key, name, doc in (
            ("concurrency", "taskpool_pool_processes", "Processes, threads or greenlets of the pool now."),
            ("min", "taskpool_pool_min_processes", "Autoscaler lower bound."),
            ("max", "taskpool_pool_max_processes", "Autoscaler upper bound."),
            ("target", "taskpool_autoscaler_target", "Autoscaler target."),
        ):
            if snap[key] is not None:
                g = GaugeMetricFamily(name, doc, labels=["pool"])
                g.add_metric([pool], float(snap[key]))
                yield g
        for key, name, doc in (
            ("in_flight", "taskpool_tasks_active", "Requests running now, per task."),
            ("reserved", "taskpool_tasks_reserved", "Requests received and not started, per task."),
        ):
            g = GaugeMetricFamily(name, doc, labels=["task"])
            for task, n in self._with_zeros(name, snap[key]).items():
                g.add_metric([task], float(n))
            yield g
        for key, name, doc in (
            ("slots_held", "taskpool_slots_held", "Slots this worker's requests hold, per semaphore."),
            ("slots_waiting", "taskpool_slot_waiters", "Requests waiting for a semaphore's slots."),
        ):
            g = GaugeMetricFamily(name, doc, labels=["semaphore"])
            for sem, n in self._with_zeros(name, snap[key]).items():
                g.add_metric([sem], float(n))
            yield g
        depths = self._queue_depths(snap["queues"])
        if depths is not None:
            g = GaugeMetricFamily(
                "taskpool_queue_depth", "Messages waiting in a queue this worker consumes.", labels=["queue"]
            )
            for queue, n in depths.items():
                g.add_metric([queue], float(n))
            yield g
        for key, value in snap["admission"].items():
            c = CounterMetricFamily(
                f"taskpool_admission_{key}", f"Admission gate: {key.replace('_', ' ')}.", labels=["pool"]
            )
            c.add_metric([pool], float(value))
            yield c
        wait_seconds = snap.get("wait_seconds") or {}
        h = HistogramMetricFamily(
            "taskpool_wait_seconds",
            "How long admitted requests waited in the admission gate, by what they waited for "
            "(limit, rate, gpu, max_in_flight, cluster_max_in_flight).",
            labels=["reason"],
        )
        for kind, hist in sorted(wait_seconds.items()):
            buckets = [(str(float(le)), float(n)) for le, n in hist["buckets"]]
            h.add_metric([kind], [*buckets, ("+Inf", float(hist["count"]))], float(hist["sum"]))
        yield h

    def _queue_depths(self, queues: list[str]) -> dict[str, int] | None:
        """Depth of each queue in Redis; None (no samples) when Redis cannot be reached."""
        import redis

        app = self.worker.app
        client = getattr(app, "broker_redis", None)  # queues are kombu's lists
        if client is None or not queues:
            return None
        try:
            return queue_depths(client, queues, keyprefix=queue_keyprefix(app.conf.broker_transport_options))
        except redis.RedisError:
            return None


class MetricsStep(bootsteps.StartStopStep):
    """Worker bootstep: serves ``/metrics`` from the main process when TASKPOOL_METRICS_PORT is set."""

    label = "taskpool metrics"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.port = 0
        try:
            self.port = metrics_port()
        except Exception as exc:  # a bad port must not stop the worker
            logger.error("taskpool: metrics off: %s", exc)
        self.address = metrics_address()
        self.server: Any = None
        self.counters: TaskCounters | None = None
        self._own_dir: str | None = None
        if self.port:
            self._setup_multiprocess()
            # Connected before the pool forks, so prefork children inherit the handlers.
            self.counters = TaskCounters()
            self.counters.connect()

    def include_if(self, parent: Any) -> bool:
        return bool(self.port)

    def _setup_multiprocess(self) -> None:
        if not os.environ.get(_MULTIPROC_ENV):
            self._own_dir = tempfile.mkdtemp(prefix="taskpool-metrics-")
            os.environ[_MULTIPROC_ENV] = self._own_dir
        from prometheus_client import values

        # prometheus-client picks its value class when first imported; the worker may have
        # imported it before this step set the folder, so pick again (no public hook for this).
        values.ValueClass = values.get_value_class()

    def start(self, parent: Any) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, os.environ[_MULTIPROC_ENV])
        registry.register(WorkerCollector(parent))
        try:
            self.server, _thread = start_http_server(self.port, self.address, registry=registry)
        except OSError as exc:
            logger.error("taskpool: metrics not served on %s:%s: %s", self.address, self.port, exc)
            return
        logger.info("taskpool: metrics on http://%s:%s/metrics", self.address, self.port)

    def stop(self, parent: Any) -> None:
        # Warm shutdown calls stop, cold shutdown calls shutdown: each cleans up.
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        counters, self.counters = self.counters, None
        if counters is not None:
            counters.disconnect()
        if self._own_dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._own_dir)
            if os.environ.get(_MULTIPROC_ENV) == self._own_dir:
                del os.environ[_MULTIPROC_ENV]
            self._own_dir = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
