"""Tasks whose state lives on a Redis Cluster (``TASKPOOL_STATE_URL=redis+cluster://...``) while
the broker is a single Redis; queues and keys of their own (``cstate.``).

Each task logs its interval and what admission granted it to the state's Redis (the Cluster,
through ``app.redis``), so tests check the bounds from records.
"""

from __future__ import annotations

from typing import Any

from taskpool import TaskPool
from taskpool.core.settings import Settings
from tests.apps.runs import timed_run

app = TaskPool(
    "cstate", config=False, settings=Settings.from_env(base={"queue_prefix": "cstate.", "keyspace": "cstate"})
)


def record(task: Any, key: str, seconds: float, **extra: Any) -> dict[str, Any]:
    return timed_run(app, task, key, seconds, **extra)


@app.task(pool="prefork", limits={"cs:shared": 1}, bind=True)
def limited(self: Any, key: str, seconds: float) -> dict[str, Any]:
    """One slot of ``cs:shared`` (sized by `taskpool limits set`, stored on the Cluster); runs in
    prefork children, which free their slots on the Cluster themselves."""
    return record(self, key, seconds)


@app.task(pool="threads", limits={"tenant:{tenant_id}": 2}, bind=True)
def per_tenant(self: Any, tenant_id: str, key: str, seconds: float) -> dict[str, Any]:
    return record(self, key, seconds, tenant=tenant_id)


@app.task(pool="threads", cluster_max_in_flight=3, bind=True)
def capped(self: Any, key: str, seconds: float) -> dict[str, Any]:
    return record(self, key, seconds)


@app.task(pool="threads", rates={"cs:api": "10/s", "cs:other": "20/s"}, bind=True)
def rated(self: Any, key: str) -> dict[str, Any]:
    return record(self, key, 0.0)


@app.task(pool="threads", limits={"cs:hold": 1}, bind=True)  # sized by `taskpool limits set`
def hold(self: Any, key: str, seconds: float) -> dict[str, Any]:
    return record(self, key, seconds)


@app.task(pool="threads")
def fails(x: int) -> None:
    raise ValueError(f"cluster state test failure {x}")
