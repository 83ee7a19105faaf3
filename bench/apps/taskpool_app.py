"""The taskpool side of bench/fanout_bench.py: the no-op tasks of bench/throughput.py's app.

``config=False`` there: no config module; the broker comes from ``TASKPOOL_BROKER_URL`` at import.
"""

from __future__ import annotations

from bench.apps.real_taskpool import app, noop_gevent, noop_prefork, noop_threads

__all__ = ["NOOP", "app"]

#: The task a worker of each pool serves.
NOOP = {"prefork": noop_prefork, "threads": noop_threads, "gevent": noop_gevent}
