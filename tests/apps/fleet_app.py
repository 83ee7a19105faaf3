"""The app the fleet test's workers run: `celery -A tests.apps.fleet_app worker -P threads`.

Its own queue prefix and keyspace, and the test gives it its own Redis database, so its workers
never meet the session workers. Each task records its start and its end in two Redis lists of its
own (``fleet-test:started``, ``fleet-test:ended``: the task's number and the worker's node), so the
test counts lost tasks (never ended) and interrupted ones (started, never ended) from records.
"""

from __future__ import annotations

import json
import time

from celery import current_task

from taskpool import TaskPool
from taskpool.core.settings import Settings

KEYSPACE = "fleet-test"
STARTED = f"{KEYSPACE}:started"
ENDED = f"{KEYSPACE}:ended"

app = TaskPool(
    "fleet_tests", config=False, settings=Settings.from_env(queue_prefix="fleet-test.", keyspace=KEYSPACE)
)


@app.task(pool="threads")
def work(number: int, seconds: float) -> int:
    """Sleeps ``seconds``, recording its start and end."""
    node = current_task.request.hostname
    app.redis.rpush(STARTED, json.dumps({"n": number, "node": node, "at": time.time()}))
    time.sleep(seconds)
    app.redis.rpush(ENDED, json.dumps({"n": number, "node": node, "at": time.time()}))
    return number


@app.task(pool="prefork", name="tests.apps.fleet_app.work_prefork")
def work_prefork(number: int, seconds: float) -> int:
    """:func:`work` on the prefork pool."""
    return work.run(number, seconds)


@app.task(pool="gevent", name="tests.apps.fleet_app.work_gevent")
def work_gevent(number: int, seconds: float) -> int:
    """:func:`work` on the gevent pool."""
    return work.run(number, seconds)


@app.task(pool="threads", max_in_flight=1, name="tests.apps.fleet_app.gated")
def gated(number: int, seconds: float) -> int:
    """:func:`work`, one at a time per worker: the others wait in the worker's admission gate."""
    return work.run(number, seconds)
