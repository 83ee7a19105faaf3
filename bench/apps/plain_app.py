"""Plain Celery, configured like taskpool's defaults: the plain side of bench/fanout_bench.py.

Settings: see ``bench/apps/plain_conf.py``; the bench may pass the current DEFAULTS
in ``BENCH_CELERY_CONF`` and checks both apps' settings before it runs.
"""

from __future__ import annotations

from bench.apps.plain_conf import plain_celery

app = plain_celery("bench_plain", "bench.plain")


@app.task
def noop() -> None:
    return None
