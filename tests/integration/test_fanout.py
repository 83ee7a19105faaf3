"""Fan-out through real workers: ``task.map``, ``task.starmap``, ``task.spawn``.

The app (tests/apps/fanout_app.py) has queues of its own (``fan.*``); this module starts a threads
worker (-c 8) and a gevent worker (-c 50) for it. No prefork worker runs, so the prefork queue
(``fanout.parked``) keeps whatever is sent to it: the queue-limit tests fill it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from celery import signals
from celery.exceptions import TaskRevokedError
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from taskpool.client import fanout
from taskpool.core.errors import ConfigurationError, QueueFull
from taskpool.core.names import queue_keys as redis_queue_keys
from tests.conftest import Worker, wait_for

THREADS = "fan-threads@test"
GEVENT = "fan-gevent@test"


@pytest.fixture(scope="module")
def fan(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The fan-out test app module, configured for the session's Redis."""
    os.environ["TASKPOOL_BROKER_URL"] = redis_url
    os.environ["FANOUT_POLLED_RESULTS"] = str(tmp_path_factory.mktemp("fanout-results"))
    import importlib

    return importlib.import_module("tests.apps.fanout_app")


@pytest.fixture(scope="module")
def fan_workers(
    fan: Any, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Worker]]:
    logs = tmp_path_factory.mktemp("fanout-worker-logs")
    workers = {
        "threads": Worker(
            "tests.apps.fanout_app", "threads", redis_url, logs, concurrency=8, name="fan-threads"
        ),
        "gevent": Worker(
            "tests.apps.fanout_app", "gevent", redis_url, logs, concurrency=50, name="fan-gevent"
        ),
        # The app whose results go to files (no async API): map polls the backend.
        "polled": Worker(
            "tests.apps.fanout_app:polled_app", "threads", redis_url, logs, concurrency=2, name="fan-polled"
        ),
    }
    # In parallel: a gevent worker alone takes seconds to stop.
    with ThreadPoolExecutor(len(workers)) as pool:
        try:
            starting = [
                pool.submit(worker.start, fan.polled_app if name == "polled" else fan.app)
                for name, worker in workers.items()
            ]
            for future in starting:
                future.result()
            yield workers
        finally:
            for _ in pool.map(lambda worker: worker.stop(), workers.values()):
                pass


@pytest.fixture
def key() -> str:
    return f"fan:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def r(redis_server: Any) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    yield client
    client.close()


class Published:
    """Every task message this process publishes for one task name (Celery's own signal)."""

    def __init__(self, task_name: str) -> None:
        self.task_name = task_name
        self.ids: list[str] = []
        self.args: dict[str, Any] = {}

    def __call__(self, sender: Any = None, headers: Any = None, body: Any = None, **_: Any) -> None:
        if sender == self.task_name:
            self.ids.append(headers["id"])
            self.args[headers["id"]] = body[0]

    def __enter__(self) -> Published:
        signals.after_task_publish.connect(self, weak=False)
        return self

    def __exit__(self, *exc: object) -> None:
        signals.after_task_publish.disconnect(self)


def with_settings(monkeypatch: pytest.MonkeyPatch, app: Any, **changes: Any) -> None:
    monkeypatch.setattr(app, "settings", dataclasses.replace(app.settings, **changes))


def queue_length(r: redis.Redis, queue: str) -> int:
    return sum(int(r.llen(k)) for k in redis_queue_keys(queue))


def revoked_on(app: Any, hostname: str) -> set[str]:
    replies = app.control.inspect(destination=[hostname], timeout=2).revoked() or {}
    return set(replies.get(hostname, []))


# -- map and starmap ----------------------------------------------------------------------------
def test_map_in_input_order(fan: Any, fan_workers: dict[str, Worker]) -> None:
    assert list(fan.square.map(range(40))) == [x * x for x in range(40)]
    assert list(fan.square.map([])) == []


def test_map_in_completion_order(fan: Any, fan_workers: dict[str, Worker], r: redis.Redis, key: str) -> None:
    """Input 0 cannot finish before the test releases it, which it does only after the other
    nine were yielded: completion order, not input order."""
    got = []
    for value in fan.hold.map(range(10), kwargs={"key": key}, order_outputs=False):
        got.append(value)
        if len(got) == 9:
            assert 0 not in got
            r.rpush(key, "go")
    assert sorted(got[:9]) == list(range(1, 10))
    assert got[9] == 0


def test_starmap_with_kwargs(fan: Any, fan_workers: dict[str, Worker]) -> None:
    pairs = [(x, x + 1) for x in range(12)] + [[100, 1]]  # a list works as well as a tuple
    assert list(fan.add.starmap(pairs, kwargs={"scale": 10})) == [(x + y) * 10 for x, y in pairs]
    assert sorted(fan.add.starmap(iter(pairs), order_outputs=False)) == sorted(x + y for x, y in pairs)


def test_return_exceptions_yields_the_rebuilt_exception(
    fan: Any, fan_workers: dict[str, Worker], key: str
) -> None:
    got = list(fan.check.map([1, -2, 3], kwargs={"key": key}, return_exceptions=True))
    assert got[0] == 1 and got[2] == 3
    assert isinstance(got[1], ValueError) and str(got[1]) == "negative input -2"


def test_first_failure_raises_and_the_rest_is_revoked(
    fan: Any, fan_workers: dict[str, Worker], r: redis.Redis, key: str
) -> None:
    """Input 0 fails at once; 40 inputs of 0.3 s queue behind it on 8 threads. The map raises
    input 0's exception and revokes what has not finished: those never run."""
    with Published("fanout.check") as sent, pytest.raises(ValueError, match="negative input -1"):
        for _ in fan.check.map([-1, *range(1, 41)], kwargs={"key": key, "seconds": 0.3}):
            pass
    assert len(sent.ids) == 41
    revoked = revoked_on(fan.app, THREADS)
    results = {task_id: AsyncResult(task_id, app=fan.app) for task_id in sent.ids}
    wait_for(lambda: all(res.ready() for res in results.values()), 30, what="every input to end")
    ran = {int(x) for x in r.smembers(f"{key}:ran")}
    never_ran = {sent.args[task_id][0] for task_id in sent.ids} - ran
    assert never_ran, ran  # 8 threads x 0.3 s for 40 inputs: some were still queued
    for task_id, res in results.items():
        assert task_id in revoked or res.state in ("SUCCESS", "FAILURE")  # revoked, or had finished
        if sent.args[task_id][0] in never_ran:
            assert res.state == "REVOKED", (sent.args[task_id], res.state)
        # An input revoked while it ran may end REVOKED too: with several workers, one that does
        # not run it marks it REVOKED in the backend while it is PENDING there (Celery 5.7).


def test_closing_the_map_early_revokes_the_rest(
    fan: Any, fan_workers: dict[str, Worker], r: redis.Redis, key: str
) -> None:
    with Published("fanout.check") as sent:
        results = fan.check.map(range(30), kwargs={"key": key, "seconds": 0.2})
        assert next(results) == 0
        results.close()  # what a `break` out of a for loop does
    revoked = revoked_on(fan.app, THREADS)
    assert len(sent.ids) == 30
    wait_for(
        lambda: all(AsyncResult(i, app=fan.app).ready() for i in sent.ids), 30, what="every input to end"
    )
    ran = {int(x) for x in r.smembers(f"{key}:ran")}
    assert len(ran) < 30
    for task_id in sent.ids:
        if sent.args[task_id][0] not in ran:
            assert task_id in revoked and AsyncResult(task_id, app=fan.app).state == "REVOKED"


# -- timeout (early, so its naps end while later tests run) ------------------------------------
def test_timeout_names_the_task_and_what_was_outstanding(
    fan: Any, fan_workers: dict[str, Worker], key: str
) -> None:
    with Published("fanout.nap") as sent, pytest.raises(CeleryTimeoutError) as info:
        list(fan.nap.map(range(10), kwargs={"key": key, "seconds": 2}, timeout=0.5))
    message = str(info.value)
    assert "fanout.nap" in message and "10 result(s) outstanding" in message, message
    assert set(sent.ids) <= revoked_on(fan.app, GEVENT)


def test_ten_thousand_inputs_each_run_exactly_once(
    fan: Any, fan_workers: dict[str, Worker], r: redis.Redis, key: str
) -> None:
    n = 10_000
    results = list(fan.record.map(range(n), kwargs={"key": key}))
    assert results == list(range(n))  # in order, none lost, none twice
    runs = r.hgetall(key)
    assert len(runs) == n
    assert {int(x) for x in runs} == set(range(n))
    assert set(runs.values()) == {"1"}  # each input ran exactly once


def test_backpressure_bounds_what_is_queued_or_running(
    fan: Any, fan_workers: dict[str, Worker], r: redis.Redis, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With map_max_outstanding=20: at every yield, sent - yielded <= 20 (from Celery's publish
    signal), and inside the tasks running + queued never exceeds 20 (recorded by each task)."""
    limit = 20
    with_settings(monkeypatch, fan.app, map_max_outstanding=limit)
    with Published("fanout.tracked") as sent:
        ahead = []
        yielded = 0
        for _ in fan.tracked.map(range(150), kwargs={"key": key, "seconds": 0.03}):
            yielded += 1
            ahead.append(len(sent.ids) - yielded)
    assert yielded == 150 and len(sent.ids) == 150
    assert max(ahead) <= limit - 1  # after a yield, at most limit - 1 are still out
    seen = [int(v) for v in r.lrange(f"{key}:seen", 0, -1)]
    assert len(seen) == 150
    assert max(seen) <= limit, max(seen)
    assert max(seen) > 8, seen  # more than the 8 threads: the queue did hold some, the bound was live


def test_map_polls_a_backend_without_the_async_api(fan: Any, fan_workers: dict[str, Worker]) -> None:
    assert not fan.polled_app.backend.is_async  # files: no pub/sub, so map polls (get_many)
    assert list(fan.polled_check.map(range(30))) == [x * 10 for x in range(30)]
    assert sorted(fan.polled_check.map(range(30), order_outputs=False)) == [x * 10 for x in range(30)]
    got = list(fan.polled_check.map([1, -1, 2], return_exceptions=True))
    assert got[0] == 10 and got[2] == 20 and isinstance(got[1], ValueError)
    with pytest.raises(ValueError, match="negative input -3"):
        list(fan.polled_check.map([1, -3, 2]))
    call = fan.polled_check.spawn(4)
    assert call.get(timeout=20) == 40 and call.status == "SUCCESS"


# -- spawn ----------------------------------------------------------------------------------------
def test_spawn_get_and_status(fan: Any, fan_workers: dict[str, Worker]) -> None:
    call = fan.square.spawn(7)
    assert isinstance(call, fanout.Call) and isinstance(call, AsyncResult)
    assert call.get(timeout=20) == 49
    assert call.status == "SUCCESS" and call.ready()
    assert call.then is not None  # the whole AsyncResult API is there


def test_cancel_a_spawned_call_that_has_not_started(
    fan: Any, fan_workers: dict[str, Worker], r: redis.Redis, key: str
) -> None:
    """8 long calls take the threads worker's 8 slots; the 9th waits in the queue, is cancelled,
    and never runs."""
    long_calls = [fan.check.spawn(x, key, seconds=1.5) for x in range(8)]
    behind = fan.check.spawn(99, key)
    assert behind.status == "PENDING"
    behind.cancel()
    assert [c.get(timeout=30) for c in long_calls] == list(range(8))
    with pytest.raises(TaskRevokedError):
        behind.get(timeout=20)
    assert behind.status == "REVOKED"
    assert "99" not in r.smembers(f"{key}:ran")
    assert behind.id in revoked_on(fan.app, THREADS)


# -- queue limit --------------------------------------------------------------------------------
def test_queue_full_refuses_map_and_spawn_and_publishes_nothing(
    fan: Any, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = fan.app.settings.queue_for("prefork")
    r.delete(*redis_queue_keys(queue))
    try:
        for x in range(3):
            fan.parked.delay(x)  # nobody consumes the prefork queue
        with_settings(monkeypatch, fan.app, max_queue_length=3)
        with pytest.raises(QueueFull) as info:
            next(fan.parked.map(range(10)))
        message = str(info.value)
        for part in ("fanout.parked", repr(queue), "holds 3 message(s)", "max_queue_length=3", "nothing"):
            assert part in message, message
        with pytest.raises(QueueFull, match=r"task 'fanout\.parked': queue"):
            fan.parked.spawn(1)
        assert queue_length(r, queue) == 3  # nothing was published
    finally:
        r.delete(*redis_queue_keys(queue))


def test_queue_full_mid_map_raises_and_revokes_what_is_outstanding(
    fan: Any, fan_workers: dict[str, Worker], r: redis.Redis, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The map has sent 4 (input 0 runs for 2 s); the threads worker stops consuming and the
    queue fills to the limit; the map's next top-up raises QueueFull, sends nothing more, and
    revokes input 0, which had not finished."""
    queue = fan.app.settings.queue_for("threads")
    with_settings(monkeypatch, fan.app, max_queue_length=10, map_max_outstanding=4)
    with Published("fanout.check") as sent:
        calls = [(0, key, 2.0)] + [(x, key, 0.0) for x in range(1, 40)]
        results = fan.check.starmap(calls, order_outputs=False)
        try:
            first = next(results)  # sends inputs 0-3
            assert len(sent.ids) == 4 and first != 0
            fan.app.control.cancel_consumer(queue, destination=[THREADS], reply=True)
            for x in range(10):
                fan.square.delay(x)
            with pytest.raises(QueueFull, match=r"queue 'fan\.threads' holds 10 message"):
                for _ in results:
                    pass
            assert len(sent.ids) == 4  # nothing more was sent
            assert queue_length(r, queue) == 10
        finally:
            fan.app.control.add_consumer(queue, destination=[THREADS], reply=True)
    assert sent.ids[0] in revoked_on(fan.app, THREADS)


# -- eager mode -----------------------------------------------------------------------------------
def test_eager_map_and_spawn_run_in_process(fan: Any, monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    monkeypatch.setitem(fan.app.conf, "task_always_eager", True)
    assert list(fan.square.map(range(5))) == [0, 1, 4, 9, 16]
    assert list(fan.add.starmap([(1, 2)], kwargs={"scale": 3})) == [9]
    got = list(fan.check.map([1, -1], kwargs={"key": key}, return_exceptions=True))
    assert got[0] == 1 and isinstance(got[1], ValueError)
    with pytest.raises(ValueError, match="negative input -5"):
        list(fan.check.map([-5], kwargs={"key": key}))
    call = fan.square.spawn(3)
    assert isinstance(call, fanout.Call) and call.get() == 9 and call.status == "SUCCESS"


# -- validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("timeout", [-1, "soon", True, float("nan")])
def test_bad_timeout_is_refused_at_the_call(fan: Any, timeout: Any) -> None:
    with pytest.raises(
        ConfigurationError, match=r"task 'fanout.square': timeout=.* must be a number of seconds"
    ):
        fan.square.map(range(3), timeout=timeout)


def test_bad_flags_are_refused(fan: Any) -> None:
    with pytest.raises(
        ConfigurationError, match=re.escape("task 'fanout.square': order_outputs='yes' must be True or False")
    ):
        fan.square.map(range(3), order_outputs="yes")


def test_bad_inputs_name_the_task_and_the_value(fan: Any) -> None:
    with pytest.raises(TypeError, match=re.escape("task 'fanout.square': items=5 must be an iterable")):
        fan.square.map(5)
    with pytest.raises(
        TypeError, match=re.escape("task 'fanout.square': items='abc' must be an iterable of inputs")
    ):
        fan.square.map("abc")
    with pytest.raises(
        TypeError, match=r"task 'fanout.add': arguments of input #1 must be a tuple or a list, got 'ab'"
    ):
        next(fan.add.starmap([(1, 2), "ab"]))
    with pytest.raises(TypeError, match=r"task 'fanout\.add': kwargs=.* must be a dict"):
        fan.add.starmap([(1, 2)], kwargs=[("scale", 2)])


def test_map_inside_a_task_is_refused(fan: Any) -> None:
    from celery.result import denied_join_result

    with denied_join_result(), pytest.raises(RuntimeError, match=re.escape("Never call result.get()")):
        fan.square.map(range(3))
