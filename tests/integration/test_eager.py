"""Eager mode (`task_always_eager`, `.apply()`): async tasks, retries and dead letters in-process."""

from __future__ import annotations

import asyncio

import pytest

from taskpool import TaskPool


@pytest.fixture
def eager_app(redis_url: str) -> TaskPool:
    app = TaskPool(
        "eager", config=False, environ={"TASKPOOL_BROKER_URL": redis_url, "TASKPOOL_KEYSPACE": "eager"}
    )
    app.conf.task_always_eager = True
    return app


def test_async_task_runs_eagerly_on_one_loop(eager_app: TaskPool) -> None:
    @eager_app.task(pool="gevent")
    async def loop_id(x: int) -> list[int]:
        await asyncio.sleep(0)
        return [x * 2, id(asyncio.get_running_loop())]

    first, second = loop_id.delay(21).get(), loop_id.apply((1,)).get()
    assert first[0] == 42 and second[0] == 2
    assert first[1] == second[1]  # the same persistent loop, not one per call


def test_eager_retries_then_dead_letter(eager_app: TaskPool) -> None:
    calls: list[int] = []

    @eager_app.task(pool="threads", retries=2, backoff=0.01, retry_on=ConnectionError)
    def flaky(fail_until: int) -> int:
        calls.append(1)
        if len(calls) < fail_until:
            raise ConnectionError(f"call {len(calls)}")
        return len(calls)

    assert flaky.delay(3).get() == 3
    calls.clear()
    eager_app.dead_letters.purge()
    result = flaky.delay(10)
    with pytest.raises(ConnectionError, match="call 3"):
        result.get()
    assert len(calls) == 3
    [record] = eager_app.dead_letters.list()
    assert record.task.endswith("flaky") and record.attempts == 3 and record.args == [10]
