"""Bad values are refused at the door, with a one-line error naming the value, and a bad value
that got into Redis anyway fails the task with a dead letter, never the worker."""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from taskpool.core.errors import ConfigurationError, MessageTooLarge
from taskpool.stores.limits import LimitStore
from tests.conftest import Worker, taskpool_cli


def one_line_error(done: Any, *needles: str) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return str(lines[0])


@pytest.mark.parametrize(
    "name, size, shown",
    [
        ("license:x", "99999999999999999999999", "99999999999999999999999"),
        ("license:x", "0", "got 0"),
        ("license:x", "abc", "'abc'"),
        ("license:x", "1.5", "'1.5'"),
        ("", "3", "limit name ''"),
        ("bad name", "3", "'bad name'"),
    ],
)
def test_limits_set_refuses_bad_values(tp_app: Any, name: str, size: str, shown: str) -> None:
    one_line_error(taskpool_cli("tests.apps.app", "limits", "set", name, size), shown)


def test_limit_store_api_refuses_the_same(tp_app: Any) -> None:
    store = LimitStore(tp_app.app.redis, "values-test")
    for name, size in (("x", 10**23), ("x", 0), ("x", True), ("", 1)):
        with pytest.raises(ConfigurationError):
            store.set(name, size)  # type: ignore[arg-type]


def test_bad_stored_size_fails_the_task_with_a_dead_letter_and_the_worker_lives(
    redis_url: str, tmp_path: Path
) -> None:
    os.environ["TASKPOOL_BROKER_URL"] = redis_url
    lim = importlib.import_module("tests.apps.limits_app")
    app = lim.app
    r = app.redis
    limits_key = LimitStore(r, app.settings.keyspace).key
    worker = Worker("tests.apps.limits_app", "threads", redis_url, tmp_path, concurrency=2, name="badsize")
    worker.start(app)
    try:
        for stored in ("99999999999999999999999", "abc", "0", "-4"):
            r.hset(limits_key, "license:test", stored)
            time.sleep(2.1)  # workers cache a limit's size for 2 s
            key = f"badsize-{os.urandom(3).hex()}"
            result = lim.licensed.delay(key, 0.01)
            with pytest.raises(Exception, match=rf"limit 'license:test': the stored size '{stored}' is not"):
                result.get(timeout=30)
            assert any(d.task_id == result.id for d in app.dead_letters.list(20)), stored
            assert worker.process is not None and worker.process.poll() is None, worker.log()
            assert r.llen(f"{key}:started") == 0
        r.hset(limits_key, "license:test", "1")
        time.sleep(2.1)
        assert lim.licensed.delay(f"badsize-{os.urandom(3).hex()}", 0.01).get(timeout=30)
        assert "Unrecoverable" not in worker.log() and "ResponseError" not in worker.log()
    finally:
        worker.stop()
        r.hdel(limits_key, "license:test")


def test_scale_refuses_non_finite_and_above_ceiling(tp_app: Any, pool_workers: dict[str, Worker]) -> None:
    app = tp_app.app
    one_line_error(
        taskpool_cli("tests.apps.app", "scale", "--pool", "threads", "--max", "1000000000"),
        "--max 1000000000",
        "ceiling of 512",
    )
    for value in ("nan", "inf"):
        one_line_error(
            taskpool_cli("tests.apps.app", "scale", "--pool", "threads", "--cooldown", value),
            f"--cooldown {value}",
        )
    # The worker checks too (celery control, Flower's form, another client).
    node = pool_workers["threads"].hostname
    before = app.control.inspect([node], timeout=2).stats()[node]["autoscaler"]
    for arguments, needle in (
        ({"pool": "threads", "max": 1_000_000_000}, "ceiling of 512"),
        ({"pool": "threads", "cooldown": float("nan")}, "cooldown=nan must be a finite number"),
        ({"pool": "threads", "cooldown": float("inf")}, "cooldown=inf must be a finite number"),
    ):
        [reply] = app.control.broadcast(
            "taskpool_scale", arguments=arguments, destination=[node], reply=True, timeout=2
        )
        assert needle in reply[node]["error"], reply
    replies = app.control.autoscale(100_000, 1, destination=[node], reply=True, timeout=2)
    assert "ceiling of 512" in str(replies), replies
    after = app.control.inspect([node], timeout=2).stats()[node]["autoscaler"]
    assert (after["min"], after["max"]) == (before["min"], before["max"])


def test_a_message_too_large_is_refused_before_it_is_sent(tp_app: Any) -> None:
    app = tp_app.app
    queue = "values-test.never-consumed"
    big = "x" * (11 * 1024 * 1024)
    with pytest.raises(
        MessageTooLarge, match=r"task 'tests.apps.app.tag': message of 11,534,\d+ bytes is above"
    ):
        tp_app.tag.apply_async((big,), queue=queue)
    with pytest.raises(MessageTooLarge):
        tp_app.tag.delay(big)
    assert app.redis.llen(queue) == 0


def test_large_args_stay_out_of_results(tp_app: Any, pool_workers: dict[str, Worker]) -> None:
    app = tp_app.app
    small = tp_app.tag.delay(7)
    assert small.get(timeout=20) == "result=7"
    assert small.args == [7]  # result_extended keeps small args
    big = "y" * (200 * 1024)
    result = tp_app.tag.delay(big)
    assert result.get(timeout=20) == f"result={big}"
    assert isinstance(result.args, str) and "args left out of the result" in result.args
    stored = app.backend.client.get(app.backend.get_key_for_task(result.id))
    assert len(stored) < len(big) + 10_000  # the result itself, not the args on top of it
