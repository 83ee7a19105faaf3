"""Malformed messages on a taskpool queue: each becomes a dead letter, the worker goes on.

Each pool's worker gets every kind of broken message (transport envelope and task message),
then a good task; the worker must still run it, and `taskpool dead ls`/`retry` must show and
refuse the records.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from taskpool.core.errors import MalformedMessage
from taskpool.stores.dead_letters import DeadLetterStore
from tests.conftest import ROOT, Worker, wait_for

PREFIX = "mal."
KEYSPACE = "malformed"
ENV = {"TASKPOOL_QUEUE_PREFIX": PREFIX, "TASKPOOL_KEYSPACE": KEYSPACE}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real `taskpool` command, on this test's keyspace."""
    env = dict(os.environ, TASKPOOL_APP="tests.apps.app", PYTHONPATH=str(ROOT), COLUMNS="400", **ENV)
    cmd = [sys.executable, "-m", "taskpool", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def real_entry(tp_app: Any, queue: str) -> dict[str, Any]:
    """A real task message, as kombu stores it in Redis, for a queue nobody consumes."""
    scratch = f"{PREFIX}scratch-{uuid.uuid4().hex[:6]}"
    tp_app.where_threads.apply_async(queue=scratch)
    raw = tp_app.app.redis.rpop(scratch)
    entry = json.loads(raw)
    entry["properties"]["delivery_info"]["routing_key"] = queue
    return dict(entry)


def with_body(entry: dict[str, Any], body: bytes, **headers: Any) -> bytes:
    out = json.loads(json.dumps(entry))
    out["body"] = base64.b64encode(body).decode()
    out["headers"].update(headers)
    out["headers"]["id"] = headers.get("id", str(uuid.uuid4()))
    out["properties"]["delivery_tag"] = str(uuid.uuid4())
    return json.dumps(out).encode()


def malformed(tp_app: Any, queue: str) -> dict[str, bytes]:
    entry = real_entry(tp_app, queue)
    bad_b64 = json.loads(json.dumps(entry))
    bad_b64["body"] = "!!not base64@@"
    headers_list = json.loads(json.dumps(entry))
    headers_list["headers"] = [1, 2]
    return {
        "not JSON": b"hello, worker",
        "a JSON list": b"[1, 2, 3]",
        "a JSON string": b'"just a string"',
        "no properties": b'{"body": "", "headers": {}}',
        "body not base64": json.dumps(bad_b64).encode(),
        "headers a list": json.dumps(headers_list).encode(),
        "body not JSON": with_body(entry, b"this is not json"),
        'body {"a":1}': with_body(entry, b'{"a": 1}'),
        "body a string": with_body(entry, b'"abc"'),
        "args not a list": with_body(entry, b"[5, {}, {}]"),
        "kwargs not an object": with_body(entry, b"[[], [1], {}]"),
        "id not a string": with_body(entry, b"[[], {}, {}]", id=7),
    }


@pytest.mark.parametrize("pool", ["prefork", "threads", "gevent"])
def test_worker_survives_every_malformed_message(
    tp_app: Any, redis_url: str, tmp_path: Path, pool: str
) -> None:
    app = tp_app.app
    r = app.redis
    store = DeadLetterStore(r, KEYSPACE)
    store.purge()
    queue = f"{PREFIX}{pool}"
    good = getattr(tp_app, f"where_{pool}")
    worker = Worker("tests.apps.app", pool, redis_url, tmp_path, concurrency=2, name=f"mal-{pool}", env=ENV)
    worker.start(app)
    try:
        cases = malformed(tp_app, queue)
        for n, (what, raw) in enumerate(cases.items(), start=1):
            r.lpush(queue, raw)
            wait_for(lambda n=n: store.count() >= n, 20, what=f"a dead letter for {what}")
            assert worker.process is not None and worker.process.poll() is None, f"{what}: {worker.log()}"
            facts = good.apply_async(queue=queue).get(timeout=20)  # the next good task runs
            assert facts["worker_pool"] == pool, what
        records = store.list()
        assert len(records) == len(cases)
        assert all(rec.refused and rec.queue == queue and rec.attempts == 0 for rec in records)
        assert all(rec.raw for rec in records)
        assert "CRITICAL" not in worker.log() and "Unrecoverable" not in worker.log()
        # Nothing left behind for kombu to restore later.
        # (kombu's unacked hash is shared by every worker of the session: look at this queue's;
        # the last good task is acked just after its result is stored.)
        wait_for(
            lambda: not [m for m in map(json.loads, r.hvals("unacked")) if m[2] == queue],
            10,
            what=f"no unacked message of {queue}",
        )
        assert r.llen(queue) == 0
    finally:
        worker.stop()


def test_refused_records_in_the_cli_and_failure_for_the_caller(
    tp_app: Any, redis_url: str, tmp_path: Path
) -> None:
    app = tp_app.app
    r = app.redis
    store = DeadLetterStore(r, KEYSPACE)
    store.purge()
    queue = f"{PREFIX}threads"
    worker = Worker("tests.apps.app", "threads", redis_url, tmp_path, concurrency=2, name="mal-cli", env=ENV)
    worker.start(app)
    try:
        entry = real_entry(tp_app, queue)
        task_id = str(uuid.uuid4())
        r.lpush(queue, with_body(entry, b"[5, {}, {}]", id=task_id))  # args not a list
        with pytest.raises(MalformedMessage, match="args are a JSON int, not a list"):
            app.AsyncResult(task_id).get(timeout=20)
        r.lpush(queue, b"not json at all")
        wait_for(lambda: store.count() == 2, 20, what="two dead letters")
        unknown_id = str(uuid.uuid4())
        r.lpush(
            queue, with_body(entry, b"[[1, 2], {}, {}]", task="tests.apps.app.no_such_task", id=unknown_id)
        )
        wait_for(lambda: store.count() == 3, 20, what="the unknown task's dead letter")
    finally:
        worker.stop()
    records = {rec.task_id: rec for rec in store.list()}
    refused = records[task_id]
    assert refused.task == tp_app.where_threads.name and refused.headers and refused.headers["id"] == task_id
    unknown = records[unknown_id]
    assert unknown.refused is None and unknown.args == [1, 2]  # retryable once a worker has the task

    listing = cli("dead", "ls")
    assert listing.returncode == 0, listing.stderr
    # The exception column folds long text across lines: read the table without borders and blanks.
    flat = re.sub(r"[\s│┃|]+", "", listing.stdout)
    assert "argsareaJSONint" in flat and "notJSON" in flat, listing.stdout
    done = cli("dead", "retry", refused.id)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and refused.id in lines[0] and "cannot be sent again" in lines[0], done.stderr
    assert store.count() == 3  # nothing removed
