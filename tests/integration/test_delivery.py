"""The worker command, and at-least-once delivery when a whole worker is SIGKILLed."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from taskpool.ops.launcher import launch
from tests.conftest import ROOT, Worker, wait_for


def test_taskpool_worker_command_serves_its_pool_with_defaults(
    tp_app: Any, redis_url: str, tmp_path: Path
) -> None:
    """`taskpool worker --pool threads` consumes only the threads queue, named threads@HOST."""
    env = dict(
        os.environ,
        TASKPOOL_QUEUE_PREFIX="cli.",  # its own queues, away from the session's workers
        PYTHONPATH=str(ROOT),
    )
    log = tmp_path / "cli-worker.log"
    cmd = [
        sys.executable,
        "-m",
        "taskpool",
        "worker",
        "-A",
        "tests.apps.app",
        "--pool",
        "threads",
        "-f",
        str(log),
    ]
    proc = launch(cmd, broker_url=redis_url, env=env, cwd=ROOT)
    hostname = f"threads@{socket.gethostname()}"
    try:
        wait_for(lambda: tp_app.app.control.ping(destination=[hostname], timeout=0.5), 30, what="cli worker")
        result = tp_app.where_threads.apply_async(queue="cli.threads")
        facts = result.get(timeout=20)
        assert result.worker == hostname
        assert facts["worker_pool"] == "threads" and facts["pid"] == proc.pid
        stats = tp_app.app.control.inspect([hostname]).stats()[hostname]
        assert stats["pool"]["max-concurrency"] == 8  # threads default
        text = log.read_text()
        assert "taskpool: threads worker consuming cli.threads;" in text
    finally:
        proc.stop(30)


def test_whole_worker_sigkill_task_comes_back_after_visibility_timeout(
    tp_app: Any, redis_url: str, tmp_path: Path
) -> None:
    """A SIGKILLed worker's unacked task is redelivered to the next worker once it is visible."""
    env = {
        "TASKPOOL_QUEUE_PREFIX": "kill.",
        "TASKPOOL_VISIBILITY_TIMEOUT": "3",
        # kombu sweeps for expired unacked messages every interval * throttle seconds (100 s by default).
        "TASKPOOL_BROKER_TRANSPORT_OPTIONS": json.dumps(
            {"unacked_restore_interval": 1, "unacked_restore_throttle": 1}
        ),
    }
    app = tp_app.app
    r = app.redis
    key = f"killed-{os.urandom(4).hex()}"
    victim = Worker(
        "tests.apps.app", "prefork", redis_url, tmp_path, concurrency=1, name="victim", env=env
    ).start(app)
    try:
        result = tp_app.slow.apply_async((key, 1.0), queue="kill.prefork")
        wait_for(lambda: r.llen(f"{key}:pids") == 1, 20, what="the task to start")
        victim.kill_all()
    finally:
        victim.stop()
    assert result.status == "PENDING"
    rescuer = Worker(
        "tests.apps.app", "prefork", redis_url, tmp_path, concurrency=1, name="rescuer", env=env
    ).start(app)
    try:
        assert result.get(timeout=60) == 2  # started twice: once on the victim, once here
        assert result.worker == "rescuer@test"
    finally:
        rescuer.stop()
