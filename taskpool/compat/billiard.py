"""billiard internals taskpool relies on, in one place (read from billiard 4.3 as installed).

Each function names the private attribute it uses; tests/test_compat.py fails loudly when one
of them changes.
"""

from __future__ import annotations

from typing import Any


# -- autoscale: the prefork children (taskpool.worker.autoscale) -------------------------------------
# Read from billiard 4.3.2: billiard/pool.py.
def child_pids(pool: Any) -> list[int]:
    """The pids of a billiard ``Pool``'s worker processes (empty for anything else).

    ``Pool._pool``, the list of ``Process`` objects; there is no public list of child pids
    (Celery's prefork ``TaskPool.info`` reads the same attribute).
    """
    procs = getattr(pool, "_pool", None)
    if not isinstance(procs, list):
        return []
    return [pid for pid in (getattr(proc, "pid", None) for proc in procs) if isinstance(pid, int)]


# -- end of autoscale ------------------------------------------------------------------------------
