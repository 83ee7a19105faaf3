"""The app of bench/flow_bench.py: the same no-op task with and without three stacked limits.

``stacked`` has a keyed limit (``tenant:{tenant_id}``, 50 per tenant), a keyed
``cluster_max_in_flight`` (50 per tenant) and a cluster-wide rate (``bench:api``, 50/s); ``plain``
has none. Each run appends ``{"sent", "start", "rate_at"}`` (wall-clock seconds; ``rate_at`` is when
the gate took the rate token, Redis clock) to the Redis list named by ``key``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from taskpool import TaskPool
from taskpool.core import names

app = TaskPool("bench_flow", config=False)
RATE = 50


def _record(task: Any, key: str, sent: float) -> None:
    entry = {"sent": sent, "start": time.time(), "rate_at": getattr(task.request, names.RATE_AT_KEY, None)}
    app.redis.rpush(key, json.dumps(entry))


@app.task(pool="threads", bind=True)
def plain(self: Any, tenant_id: str, key: str, sent: float) -> None:
    _record(self, key, sent)


@app.task(
    pool="threads",
    limits={"tenant:{tenant_id}": 50},
    cluster_max_in_flight={"{tenant_id}": 50},
    rates={"bench:api": f"{RATE}/s"},
    bind=True,
)
def stacked(self: Any, tenant_id: str, key: str, sent: float) -> None:
    _record(self, key, sent)
