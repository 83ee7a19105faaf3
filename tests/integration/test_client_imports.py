"""A client that only declares tasks and sends them imports nothing of the worker side.

In a fresh interpreter: declare tasks with every option that has worker-side machinery (limits,
GPU slots, batching, max_in_flight), send each with ``.delay()`` to the session's Redis, then
look at ``sys.modules``. An import hook records which taskpool line imported each forbidden
module, so a failure says where the leak comes from.

Celery itself imports ``celery.worker.state`` in every process that builds an app: its Django
fixup (``celery/fixups/django.py``, loaded by ``Celery.__init__``) imports ``WorkController``.
What a plain Celery client imports is the baseline; taskpool may add nothing to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import redis

from tests.conftest import ROOT

#: Modules that only a worker needs: taskpool's worker and ops packages, and Celery's and
#: billiard's worker internals.
FORBIDDEN = (
    "taskpool.worker",
    "taskpool.ops",
    "celery.worker.state",
    "celery.worker.consumer",
    "billiard.pool",
)

RECORDER = r"""
import importlib.abc, json, sys, traceback

FORBIDDEN = tuple(json.loads(sys.argv[1]))
importers = {}


class Recorder(importlib.abc.MetaPathFinder):
    # Finds nothing: notes who imports a forbidden module, then lets the real finders load it.
    def find_spec(self, name, path=None, target=None):
        if name.startswith(FORBIDDEN) and name not in importers:
            frames = [f for f in traceback.extract_stack()[:-1] if "/taskpool/" in f.filename]
            importers[name] = [f"{f.filename.rsplit('/taskpool/', 1)[1]}:{f.lineno} {f.line}" for f in frames]
        return None


sys.meta_path.insert(0, Recorder())


def report(sent):
    leaked = sorted(m for m in sys.modules if m.startswith(FORBIDDEN))
    print(json.dumps({"sent": sent, "leaked": {m: importers.get(m, []) for m in leaked}}))

"""

PLAIN_CLIENT = (
    RECORDER
    + r"""
from celery import Celery

app = Celery("plain-imports", broker=sys.argv[2], backend=sys.argv[2])
app.conf.task_default_queue = "client-imports.plain"


@app.task
def plain(x):
    return x


report([plain.delay(1).id])
"""
)

CLIENT = (
    RECORDER
    + r"""
from taskpool import Batch, TaskPool

app = TaskPool("client-imports", config=False, environ={
    "TASKPOOL_BROKER_URL": sys.argv[2],
    "TASKPOOL_QUEUE_PREFIX": "client-imports.",
    "TASKPOOL_KEYSPACE": "client-imports",
})


@app.task(pool="threads", limits={"license:client-imports": 2})
def licensed(x):
    return x


@app.task(pool="prefork", gpu_slots=1)
def on_gpu(x):
    return x


@app.task(pool="threads", batch=Batch(max_size=8, wait_ms=10))
def batched(xs):
    return xs


@app.task(pool="gevent", max_in_flight=3, cluster_max_in_flight=5)
async def capped(x):
    return x


@app.task
def plain(x):
    return x


report([task.delay(1).id for task in (licensed, on_gpu, batched, capped, plain)])
"""
)


def run_client(redis_url: str, code: str = CLIENT) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TASKPOOL_BROKER_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(FORBIDDEN), redis_url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_client_that_declares_and_sends_imports_nothing_of_the_worker(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        baseline = set(run_client(redis_url, PLAIN_CLIENT)["leaked"])
        outcome = run_client(redis_url)
        assert len(outcome["sent"]) == 5
        leaked = {m: where for m, where in outcome["leaked"].items() if m not in baseline}
        leaks = "\n".join(f"{m} <- {' <- '.join(reversed(where))}" for m, where in leaked.items())
        assert not leaked, f"the client imported worker modules:\n{leaks}"
    finally:
        for key in client.scan_iter("client-imports*"):
            client.delete(key)
        client.close()


def test_plain_celery_imports_only_the_worker_state(redis_url: str) -> None:
    """The baseline: Celery's Django fixup imports ``celery.worker`` (hence its ``state``), nothing
    more of the worker. If this grows, a newer Celery imports more; the test above allows it."""
    client = redis.Redis.from_url(redis_url)
    try:
        assert set(run_client(redis_url, PLAIN_CLIENT)["leaked"]) == {"celery.worker.state"}
    finally:
        for key in client.scan_iter("client-imports*"):
            client.delete(key)
        client.close()


def test_the_client_sends_what_it_declared(redis_url: str) -> None:
    """The check above runs a real client: its five messages reach their queues."""
    client = redis.Redis.from_url(redis_url)
    try:
        outcome = run_client(redis_url)
        queued = [key.decode() for key in client.scan_iter("client-imports.*") if client.type(key) == b"list"]
        assert sum(client.llen(key) for key in queued) == len(outcome["sent"]) == 5, queued
    finally:
        for key in client.scan_iter("client-imports*"):
            client.delete(key)
        client.close()


def test_the_recorder_names_the_importer() -> None:
    """A forbidden import is seen with the taskpool line that made it (here: the worker's admission)."""
    code = RECORDER + ("import taskpool.worker.admission\nprint(json.dumps(importers))\n")
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(FORBIDDEN), "redis://127.0.0.1:1/0"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    importers = json.loads(done.stdout.strip().splitlines()[-1])
    assert "taskpool.worker.admission" in importers
    assert "celery.worker.state" in importers
    assert any("worker/admission.py" in line for line in importers["celery.worker.state"])
