"""A real Prometheus (Debian's) scraping real workers with the configuration `taskpool up
--monitoring` writes: after some tasks, every query of the Grafana dashboard returns series."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskpool.ops.embedded import free_port
from taskpool.ops.monitoring import DASHBOARD, dashboard_exprs, prometheus_program
from taskpool.stores.limits import LimitStore
from tests.conftest import Worker, wait_for

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.monitoring_app"


def query_range(base: str, expr: str, start: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": time.time(), "step": "1"})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=10) as reply:
        body = json.loads(reply.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@pytest.fixture
def monitored(redis_url: str, tmp_path: Path) -> Iterator[tuple[Any, str]]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus missing: apt-get install prometheus (scripts/setup.sh --tests does)"
    os.environ["TASKPOOL_BROKER_URL"] = redis_url
    import importlib

    module = importlib.import_module(APP)
    LimitStore(module.app.redis, module.app.settings.keyspace).set("mon-api", 1)  # before workers read it
    ports = {"threads": free_port(), "prefork": free_port()}
    common = {"TASKPOOL_WORKER_SEND_TASK_EVENTS": "false"}
    workers = [
        Worker(APP, "threads", redis_url, tmp_path, name="mon-threads", extra_args=("-c", "2"),
               env={**common, "TASKPOOL_METRICS_PORT": str(ports["threads"]),
                    "TASKPOOL_AUTOSCALE_THREADS": "3,1"}),
        Worker(APP, "prefork", redis_url, tmp_path, name="mon-prefork", extra_args=("-c", "1"),
               env={**common, "TASKPOOL_METRICS_PORT": str(ports["prefork"]), "TASKPOOL_GPUS": "1",
                    "TASKPOOL_AUTOSCALE_PREFORK": "2,1"}),
    ]  # fmt: skip
    prom_port = free_port()
    program = prometheus_program(
        binary, tmp_path / "monitoring", port=prom_port, interval=0.5, flower=None, flower_auth="",
        workers={f"worker-{pool}": f"127.0.0.1:{port}" for pool, port in ports.items()},
    )  # fmt: skip
    prom_log = (tmp_path / "prometheus.log").open("w")
    prometheus = subprocess.Popen(
        program.argv, stdout=prom_log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path
    )
    try:
        for w in workers:
            w.start(module.app, timeout=60)
        yield module, program.url
    finally:
        for w in workers:
            w.stop()
        os.killpg(prometheus.pid, signal.SIGTERM)
        try:
            prometheus.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(prometheus.pid, signal.SIGKILL)
            prometheus.wait(5)
        prom_log.close()


def test_every_dashboard_query_returns_series(monitored: tuple[Any, str]) -> None:
    module, base = monitored

    def targets_up() -> bool:
        with urllib.request.urlopen(f"{base}/api/v1/targets", timeout=5) as reply:
            active = json.loads(reply.read())["data"]["activeTargets"]
        return len(active) == 2 and all(t["health"] == "up" for t in active)

    wait_for(targets_up, 60, interval=0.5, what="Prometheus scraping both workers")
    start = time.time() - 5
    results = [module.limited.delay(0.6) for _ in range(5)]
    results += [module.on_gpu.delay(0.6) for _ in range(4)]
    failing = module.always_fails.delay()
    for r in results:
        assert r.get(timeout=90) == 0.6
    with pytest.raises(RuntimeError):
        failing.get(timeout=60, propagate=True)
    exprs = [(title, expr.replace("$__rate_interval", "1m")) for title, expr in dashboard_exprs(
        json.loads((ROOT / DASHBOARD).read_text())
    )]  # fmt: skip
    missing: list[tuple[str, str]] = []

    def all_answer() -> bool:
        missing[:] = [(t, e) for t, e in exprs if not query_range(base, e, start)]
        return not missing

    try:
        wait_for(all_answer, 60, interval=1.0, what="every dashboard query to return series")
    except AssertionError:
        raise AssertionError(f"queries without series: {missing}") from None
    gpu = query_range(base, 'max_over_time(taskpool_slots_held{semaphore=~"gpu:.*"}[5m])', start)
    assert max(float(v) for s in gpu for _, v in s["values"]) == 1  # one GPU slot, held
    waiting = query_range(base, 'max_over_time(taskpool_slot_waiters{semaphore="limit:mon-api"}[5m])', start)
    assert max(float(v) for s in waiting for _, v in s["values"]) >= 1  # the limit had waiters
