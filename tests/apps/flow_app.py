"""Tasks with keyed limits, rates and stacked limits, on queues and keys of their own (``flow.``).

Each task logs its interval, its key and what admission granted it to Redis, so tests check the
bounds from records.
"""

from __future__ import annotations

from typing import Any

from taskpool import TaskPool
from taskpool.core.settings import Settings
from tests.apps.runs import timed_run

app = TaskPool(
    "flow", config=False, settings=Settings.from_env(base={"queue_prefix": "flow.", "keyspace": "flow"})
)


def record(task: Any, key: str, seconds: float, **extra: Any) -> dict[str, Any]:
    return timed_run(app, task, key, seconds, **extra)


@app.task(pool="threads", limits={"tenant:{tenant_id}": 2}, bind=True)
def per_tenant(self: Any, tenant_id: str, key: str, seconds: float) -> dict[str, Any]:
    return record(self, key, seconds, tenant=tenant_id)


@app.task(pool="threads", rates={"flow:api": "40/s"}, bind=True)
def rated(self: Any, key: str) -> dict[str, Any]:
    return record(self, key, 0.0)


@app.task(pool="threads", rates={"flow:slow:{name}": "4/s"}, retries=3, bind=True)
def slow_rated(self: Any, name: str, key: str) -> dict[str, Any]:
    return record(self, key, 0.0)


@app.task(
    pool="threads",
    rates={"flow:stack": "10/s"},
    cluster_max_in_flight=3,
    gpu_slots=1,
    bind=True,
)
def stacked(self: Any, key: str, seconds: float) -> dict[str, Any]:
    return record(self, key, seconds)


@app.task(pool="threads", max_in_flight=2, rate_limit="5/s", bind=True)
def celery_rated(self: Any, key: str) -> dict[str, Any]:
    return record(self, key, 0.0)


@app.task(pool="prefork")
def orphan() -> None:
    """Sent to a queue no test worker consumes."""


@app.task(pool="gevent", rates={"flow:gevent": "20/s"}, limits={"tenant:{tenant_id}": 3}, bind=True)
def rated_gevent(self: Any, tenant_id: str, key: str) -> dict[str, Any]:
    return record(self, key, 0.0)


@app.task(pool="threads", limits={"flow:shared": 3}, bind=True)
def wide(self: Any, key: str, seconds: float) -> dict[str, Any]:
    """Takes all three slots of the limit ``flow:shared`` (fairness among waiters)."""
    return record(self, key, seconds, kind="wide")


@app.task(pool="threads", limits={"flow:shared": 1}, bind=True)
def narrow(self: Any, key: str, seconds: float, n: int) -> dict[str, Any]:
    return record(self, key, seconds, kind="narrow", n=n)
