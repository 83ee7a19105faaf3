"""The taskpool side of bench/fanout_bench.py: one no-op task per pool, taskpool's defaults.

``config=False``: no config module; the broker comes from ``TASKPOOL_BROKER_URL`` at import.
A worker started with ``-P <pool>`` consumes only that pool's queue, hence one task per pool.
"""

from __future__ import annotations

from taskpool import TaskPool

app = TaskPool("bench_taskpool", config=False)


@app.task(pool="prefork")
def noop_prefork() -> None:
    return None


@app.task(pool="threads")
def noop_threads() -> None:
    return None


@app.task(pool="gevent")
def noop_gevent() -> None:
    return None


#: The task a worker of each pool serves.
NOOP = {"prefork": noop_prefork, "threads": noop_threads, "gevent": noop_gevent}
