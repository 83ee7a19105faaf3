"""The worker command, at-least-once delivery when a whole worker is SIGKILLed, and a warm
shutdown while a prefork child has not read its job yet."""

from __future__ import annotations

import array
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import pytest

from taskpool.core.names import queue_keys as redis_queue_keys
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


def unacked(r: Any, task_id: str) -> bool:
    """Whether the task's message waits in kombu's unacked hash (delivered, not acked yet)."""
    return any(task_id.encode() in v for v in r.hvals("unacked"))


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def unread_pipe_bytes(pid: int) -> int:
    """The most bytes waiting in one pipe that process ``pid`` holds (FIONREAD, nothing is read)."""
    most = 0
    for link in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if not os.readlink(link).startswith("pipe:"):
                continue
            fd = os.open(link, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            count = array.array("i", [0])
            fcntl.ioctl(fd, termios.FIONREAD, count)
            most = max(most, count[0])
        finally:
            os.close(fd)
    return most


@pytest.mark.parametrize("size", [1_000, 300_000], ids=["whole-job", "half-written-job"])
def test_warm_shutdown_runs_and_acks_the_job_a_stalled_child_was_handed(
    tp_app: Any, redis_url: str, tmp_path: Path, size: int
) -> None:
    """SIGTERM while the worker has written a job to a pool process that the OS has not run yet
    (SIGSTOP stands in for a busy machine): the whole job, or its first 64 KiB (the pipe's
    buffer), is in the child's pipe, and its ACK unread. The child runs it once, the worker acks
    it and exits. Celery 5.7 alone dropped the job: a half-written one left the worker waiting
    for ever, a whole one ran while its message went back on the queue (and the child waited
    30 s for its result to be read)."""
    prefix = f"stall{size}."
    queue = f"{prefix}prefork"
    app = tp_app.app
    r = app.redis
    key = f"stalled-{os.urandom(4).hex()}"
    worker = Worker(
        "tests.apps.app", "prefork", redis_url, tmp_path, concurrency=1, name=f"stall{size}",
        extra_args=("-l", "DEBUG"), env={"TASKPOOL_QUEUE_PREFIX": prefix},
    ).start(app)  # fmt: skip
    proc = worker.process
    assert proc is not None
    try:
        # One job first: the pool process is up (Celery kills one that is not within 4 s) and idle.
        first = tp_app.sized.apply_async((f"{key}-first", ""), queue=queue)
        assert first.get(timeout=60) == 0
        child = int(r.lindex(f"{key}-first:pids", 0))
        # Its result is stored before the main process reads the child's READY; the ack comes after
        # it. Until then the main process counts the child busy and would not write it the next job.
        wait_for(lambda: not unacked(r, first.id), 30, what="the first job's ack")
        os.kill(child, signal.SIGSTOP)
        try:
            wait_for(lambda: process_state(child) == "T", 10, what="the pool process to stop")
            result = tp_app.sized.apply_async((key, "x" * size), queue=queue)
            in_pipe = min(size, 60_000)  # all of it, or most of the pipe's 64 KiB
            wait_for(lambda: unread_pipe_bytes(child) >= in_pipe, 30, what="the job in the child's pipe")
            proc.send_signal(signal.SIGTERM)
            # Celery's bootsteps log: the event loop has ended, the consumer's flush comes next.
            wait_for(lambda: "Worker: Stopping Consumer" in worker.log(), 30, what="the consumer to stop")
        finally:
            os.kill(child, signal.SIGCONT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            log = worker.log()[-3000:]
            raise AssertionError(f"the worker is still in its warm shutdown:\n{log}") from None
    finally:
        if proc.poll() is None:
            worker.kill_all()
    assert proc.returncode == 0, worker.log()[-3000:]
    assert r.lrange(f"{key}:pids", 0, -1) == [str(child).encode()]  # ran once, in the stalled child
    assert result.get(timeout=10) == size
    # Acked: not back on the queue, not waiting in the unacked hash for its visibility timeout.
    assert sum(r.llen(k) for k in redis_queue_keys(queue)) == 0
    assert not unacked(r, result.id)
