"""The `taskpool` command as a user meets it, through real processes: an unreachable broker is
one line, a pool without a worker is named, ids are whole and can be shortened."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import TimeoutError as CeleryTimeoutError

from taskpool.core.names import queue_keys as redis_queue_keys
from taskpool.ops.embedded import free_port
from taskpool.stores.dead_letters import DeadLetter
from tests.conftest import ROOT, Worker, taskpool_cli

PASSWORD = "s3cret-pw"


@pytest.fixture(scope="module")
def idle(redis_url: str) -> Any:
    os.environ["TASKPOOL_BROKER_URL"] = redis_url
    return importlib.import_module("tests.apps.idle_app")


@pytest.fixture
def empty_queues(idle: Any) -> Iterator[None]:
    def purge() -> None:
        idle.app.redis.delete(*[k for p in ("threads", "threads.gpu") for k in redis_queue_keys(f"idle.{p}")])

    purge()
    yield
    purge()


@pytest.mark.parametrize(
    "command",
    [("status",), ("dead", "ls"), ("limits", "ls"), ("slots",), ("up", "--no-flower", "--metrics-port", "0")],
    ids=lambda c: " ".join(c[:2]),
)
def test_unreachable_broker_is_one_line_with_the_password_masked(command: tuple[str, ...]) -> None:
    port = free_port()  # nothing listens there
    env = {"TASKPOOL_BROKER_URL": f"redis://:{PASSWORD}@127.0.0.1:{port}/0"}
    done = taskpool_cli("tests.apps.idle_app", *command, env=env)
    assert done.returncode == 1, done
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    name = " ".join(c for c in command if not c.startswith("-") and c != "0")
    assert lines[0].startswith(f"Error: taskpool {name}: cannot reach Redis at"), lines[0]
    assert f"redis://:**@127.0.0.1:{port}/0" in lines[0]
    assert "Check that Redis runs there" in lines[0]
    assert PASSWORD not in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("module", ["taskpool.cli", "taskpool.ops.cli"])
def test_python_m_runs_the_command_under_its_old_and_new_paths(module: str) -> None:
    """``taskpool.cli`` moved to the package ``taskpool.ops.cli``: ``python -m`` still runs it."""

    def run(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", name, "dead", "--help"], capture_output=True, text=True, timeout=60
        )

    done, expected = run(module), run("taskpool")
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected.stdout and done.stdout.startswith("Usage: taskpool dead [OPTIONS]")


def test_a_client_with_an_unreachable_redis_ends_in_one_line_naming_it() -> None:
    """A client's `.delay().get()`: Celery's retries, then what failed, where (password masked),
    what to check; not "Retry limit exceeded while trying to reconnect" to a Redis never reached."""
    port = free_port()  # nothing listens there
    code = (
        "import tests.apps.idle_app as m\n"
        "options = m.app.conf.result_backend_transport_options\n"
        "m.app.conf.result_backend_transport_options = {**options, 'retry_policy': {'max_retries': 2}}\n"
        "m.nap.delay(0).get(timeout=5)\n"
    )
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    env = {**os.environ, "TASKPOOL_BROKER_URL": url, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "taskpool.core.errors.ResultBackendUnreachable: cannot reach the result backend, Redis at "
        f"redis://:**@127.0.0.1:{port}/0 (Error 111 connecting to 127.0.0.1:{port}. Connection refused.); "
        "gave up after 2 retries. Check that Redis runs there and that TASKPOOL_RESULT_BACKEND (else "
        "TASKPOOL_BROKER_URL, else the app's result_backend) names it."
    ), done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    assert "Retry limit exceeded" not in done.stderr


def test_debug_shows_the_traceback() -> None:
    env = {"TASKPOOL_BROKER_URL": f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"}
    done = taskpool_cli("tests.apps.idle_app", "--debug", "slots", env=env)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ConnectionError" in done.stderr


def test_a_pool_without_worker_is_named_by_status_map_and_spawn(
    idle: Any, empty_queues: None, redis_url: str, tmp_path: Path
) -> None:
    waiting = idle.nap.delay(0)  # idle.threads: no worker consumes it
    status = taskpool_cli("tests.apps.idle_app", "status", "-A", "tests.apps.idle_app")
    assert status.returncode == 0, status.stderr
    assert "app tests.apps.idle_app (-A), Redis at redis://127.0.0.1:" in status.stdout
    assert (
        "warning: queue idle.threads holds 1 message(s) and no live worker consumes it: they wait "
        "until a threads worker starts (`taskpool worker -A tests.apps.idle_app --pool threads`)"
    ) in status.stdout
    default = taskpool_cli("tests.apps.idle_app", "status")  # the app from TASKPOOL_APP
    assert "app tests.apps.idle_app (TASKPOOL_APP)" in default.stdout

    hint = "no live worker consumes queue 'idle.threads'"
    with pytest.raises(CeleryTimeoutError) as mapped:
        list(idle.nap.map([0, 0], timeout=0.5))
    assert "map timed out after 0.5 s with 2 result(s) outstanding" in str(mapped.value)
    assert hint in str(mapped.value)
    assert "start one (a `threads` worker: `taskpool worker -A <app> --pool threads`)" in str(mapped.value)
    call = idle.nap.spawn(0)
    with pytest.raises(CeleryTimeoutError) as spawned:
        call.get(timeout=0.5)
    assert hint in str(spawned.value)

    # With a live consumer, a timeout is only a timeout, and status shows who consumes the queue.
    worker = Worker("tests.apps.idle_app", "threads", redis_url, tmp_path, concurrency=2, name="idle-threads")
    worker.start(idle.app)
    try:
        assert waiting.get(timeout=30) == 0
        with pytest.raises(CeleryTimeoutError) as slow:
            list(idle.nap.map([5], timeout=0.5))
        assert "map timed out" in str(slow.value) and "no live worker" not in str(slow.value)
        status = taskpool_cli("tests.apps.idle_app", "status")
        assert "warning" not in status.stdout
        assert "idle-threads@test" in status.stdout
    finally:
        worker.stop()


def test_dead_letter_ids_are_whole_at_80_columns_and_retry_takes_unique_prefixes(
    idle: Any, empty_queues: None
) -> None:
    store = idle.app.dead_letters
    store.purge()
    ids = ["ab12" + "0" * 28, "ab34" + "0" * 28, "cd56" + "1" * 28]
    for n, record_id in enumerate(ids):
        store.add(
            DeadLetter(
                task="idle.nap", task_id=f"task-{n}", args=[0], kwargs={}, exception="OSError: x " * 20,
                traceback="", attempts=1, failed_at=time.time(), id=record_id,
            )
        )  # fmt: skip
    listing = taskpool_cli("tests.apps.idle_app", "dead", "ls", env={"COLUMNS": "80"})
    assert listing.returncode == 0, listing.stderr
    for record_id in ids:
        assert record_id in listing.stdout  # whole, on one line, though the terminal is narrower

    ambiguous = taskpool_cli("tests.apps.idle_app", "dead", "retry", "ab")
    assert ambiguous.returncode == 1
    expected = f"dead-letter id prefix 'ab' is ambiguous: 2 records match ({ids[0]}, {ids[1]})"
    assert expected in ambiguous.stderr
    assert store.count() == 3  # nothing was sent

    missing = taskpool_cli("tests.apps.idle_app", "dead", "retry", "zz")
    assert missing.returncode == 1 and "no dead letter with id 'zz'" in missing.stderr

    retried = taskpool_cli("tests.apps.idle_app", "dead", "retry", "ab3", "cd")
    assert retried.returncode == 0, retried.stderr
    assert f"({ids[1]})" in retried.stdout and f"({ids[2]})" in retried.stdout
    assert [r.id for r in store.list()] == [ids[0]]
    assert idle.app.redis.llen("idle.threads") == 2
    store.purge()
