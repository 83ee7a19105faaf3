"""kombu's ``global_keyprefix`` puts every queue key behind a prefix: `taskpool status` and the
fan-out queue limit count the prefixed lists, as the workers see them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis

from taskpool.core.names import queue_keys
from tests.conftest import ROOT, taskpool_cli

KEYPREFIX = "kp12:"
QUEUE = "kp.threads"  # idle_app's threads queue with TASKPOOL_QUEUE_PREFIX=kp.


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    return {
        "TASKPOOL_BROKER_URL": redis_url,
        "TASKPOOL_QUEUE_PREFIX": "kp.",
        "TASKPOOL_BROKER_TRANSPORT_OPTIONS": json.dumps({"global_keyprefix": KEYPREFIX}),
    }


@pytest.fixture
def queued(redis_client: redis.Redis) -> Iterator[None]:
    """Three messages' worth of entries in the prefixed lists (two at priority 0, one at 3)."""
    base, step3 = queue_keys(QUEUE, KEYPREFIX)[:2]
    redis_client.delete(*queue_keys(QUEUE, KEYPREFIX), *queue_keys(QUEUE))
    redis_client.lpush(base, "m1", "m2")
    redis_client.lpush(step3, "m3")
    yield
    redis_client.delete(*queue_keys(QUEUE, KEYPREFIX))


def test_status_counts_the_prefixed_queue(env: dict[str, str], queued: None) -> None:
    done = taskpool_cli("tests.apps.idle_app", "status", "--timeout", "0.5", env=env)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(f"│ {QUEUE} ")]
    assert [row[:4] for row in rows] == [["│", QUEUE, "│", "3"]], done.stdout
    assert f"queue {QUEUE} holds 3 message(s)" in done.stdout


def test_queue_limit_counts_the_prefixed_queue(env: dict[str, str], queued: None) -> None:
    code = (
        "import tests.apps.idle_app as t\n"
        "from taskpool.core.errors import QueueFull\n"
        "try:\n"
        "    t.nap.spawn(0)\n"
        "except QueueFull as exc:\n"
        "    print('refused:', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TASKPOOL_MAX_QUEUE_LENGTH": "3", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"refused: task 'idle.nap': queue {QUEUE!r} holds 3 message(s)" in done.stdout, done.stdout
