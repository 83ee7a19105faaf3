"""Batched tasks through real workers: how batches form, per-input results and failures,
retries, GPU slots per batch, chains, and no input lost when the pool process dies mid-batch."""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import TaskRevokedError

from taskpool.core.batch import Batch
from taskpool.core.errors import BatchError, ConfigurationError
from tests.conftest import Worker, wait_for


@pytest.fixture(scope="module")
def bat(redis_url: str) -> Any:
    os.environ["TASKPOOL_BROKER_URL"] = redis_url
    return importlib.import_module("tests.apps.batch_app")


@pytest.fixture(scope="module")
def threads_worker(bat: Any, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    logs = tmp_path_factory.mktemp("batch-logs")
    worker = Worker("tests.apps.batch_app", "threads", redis_url, logs, concurrency=2, name="bthreads",
                    env={"TASKPOOL_GPUS": "2"})  # fmt: skip
    worker.start(bat.app)
    yield worker
    worker.stop()


@pytest.fixture(autouse=True)
def fresh_records(bat: Any) -> None:
    keys = bat.app.redis.keys("calls:*")
    if keys:
        bat.app.redis.delete(*keys)


def calls(bat: Any, name: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in bat.app.redis.lrange(f"calls:{name}", 0, -1)]


def test_batch_option_is_validated_at_declaration(bat: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"task 'bad': batch=Batch\(max_size=0.*max_size"):
        bat.app.task(name="bad", batch=Batch(max_size=0))(lambda xs: xs)
    with pytest.raises(ConfigurationError, match=r"task 'bad2': batch=\{'max_size': 4\}"):
        bat.app.task(name="bad2", batch={"max_size": 4})(lambda xs: xs)
    with pytest.raises(ConfigurationError, match=r"bad3.*bind=True"):
        bat.app.task(name="bad3", bind=True, batch=Batch())(lambda self, xs: xs)

    def star(*xs: Any) -> Any:
        return xs

    with pytest.raises(ConfigurationError, match=r"bad4.*named parameters"):
        bat.app.task(name="bad4", batch=Batch())(star)


def test_eager_call_is_a_batch_of_one(bat: Any) -> None:
    assert bat.double.apply(args=(21,)).get() == 42
    assert bat.double(5) == 10
    pattern = r"'tests.apps.batch_app.short' must return a list .* called with 1 inputs, returned 0 results"
    with pytest.raises(BatchError, match=pattern):
        bat.short.apply(args=(1,)).get()


def test_batch_fills_by_size_and_each_caller_gets_its_own_result(bat: Any, threads_worker: Worker) -> None:
    results = [bat.double.delay(i) for i in range(8)]
    assert [r.get(timeout=20) for r in results] == [2 * i for i in range(8)]
    made = calls(bat, "double")
    assert [c["size"] for c in made] == [8]  # one call with all eight, long before wait_ms
    assert sorted(made[0]["inputs"]) == list(range(8))
    # Celery's per-request bookkeeping holds: each input has its own SUCCESS and id.
    assert {r.state for r in results} == {"SUCCESS"}


def test_batch_flushes_after_wait_ms_with_what_arrived(bat: Any, threads_worker: Worker) -> None:
    results = [bat.scaled.delay(i, i + 1, offset=100) for i in range(3)]
    assert [r.get(timeout=20) for r in results] == [i * (i + 1) + 100 for i in range(3)]
    assert [c["size"] for c in calls(bat, "scaled")] == [3]


def test_one_failed_input_fails_alone(bat: Any, threads_worker: Worker) -> None:
    bat.app.dead_letters.purge()
    results = [bat.checked.delay(x) for x in (1, -1, 2, 3)]
    assert results[0].get(timeout=20) == 2
    assert results[2].get(timeout=20) == 3 and results[3].get(timeout=20) == 4
    with pytest.raises(ValueError, match="negative input -1"):
        results[1].get(timeout=20)
    # The failed input retried under the task's policy (2 retries), alone, then was dead-lettered.
    sizes = [c["size"] for c in calls(bat, "checked")]
    assert sizes[0] == 4 and sum(sizes) == 4 + 2, sizes
    letters = bat.app.dead_letters.list()
    assert [(d.task_id, d.attempts) for d in letters] == [(results[1].id, 3)]
    assert letters[0].args == [-1]


def test_whole_call_failure_retries_every_input(bat: Any, threads_worker: Worker) -> None:
    bat.app.redis.delete("flaky:calls")
    results = [bat.flaky.delay(x) for x in range(4)]
    assert [r.get(timeout=30) for r in results] == [0, 10, 20, 30]
    inputs_per_call = [sorted(c["inputs"]) for c in calls(bat, "flaky")]
    # The first two calls raised: every input ran until a call succeeded, none ran after.
    ran = [x for inputs in inputs_per_call for x in inputs]
    assert sorted(set(ran)) == [0, 1, 2, 3]
    assert all(r.info is not None for r in results)
    assert len(inputs_per_call) >= 3


def test_wrong_result_length_fails_every_input_without_retry(bat: Any, threads_worker: Worker) -> None:
    results = [bat.short.delay(x) for x in range(3)]
    for r in results:
        with pytest.raises(
            BatchError, match=r"'tests.apps.batch_app.short'.*called with 3 inputs, returned 2"
        ):
            r.get(timeout=20)
    assert [c["size"] for c in calls(bat, "short")] == [3]  # retries=3, yet never called again


def test_a_batch_holds_one_gpu_slot_and_tells_every_input(bat: Any, threads_worker: Worker) -> None:
    results = [bat.on_gpu.delay(x) for x in range(8)]
    out = [r.get(timeout=30) for r in results]
    assert [o["x"] for o in out] == list(range(8))
    made = calls(bat, "on_gpu")
    assert sum(c["size"] for c in made) == 8
    for c in made:
        assert len(c["gpus"]) == 1 and c["gpus"][0] in (0, 1)  # one slot for the whole batch
    by_input = {o["x"]: o["gpus"] for o in out}
    for c in made:
        assert all(by_input[x] == c["gpus"] for x in c["inputs"])


def test_chain_continues_from_each_input(bat: Any, threads_worker: Worker) -> None:
    results = [(bat.double.s(i) | bat.describe.s()).delay() for i in range(3)]
    assert [r.get(timeout=20) for r in results] == [f"value={2 * i}" for i in range(3)]


def test_inspect_stats_shows_batches(bat: Any, threads_worker: Worker) -> None:
    stats = bat.app.control.inspect(destination=[threads_worker.hostname], timeout=5).stats()
    batches = stats[threads_worker.hostname]["taskpool_batches"]["tests.apps.batch_app.double"]
    assert batches["max_size"] == 8 and batches["batches"] >= 1 and batches["inputs"] >= 8


def test_killed_pool_process_mid_batch_loses_no_input(bat: Any, redis_url: str, tmp_path: Path) -> None:
    r = bat.app.redis
    r.delete("slow_square:started", "slow_square:ran")
    r.set("slow_square:seconds", 30)
    worker = Worker("tests.apps.batch_app", "prefork", redis_url, tmp_path, concurrency=1, name="bprefork")
    worker.start(bat.app)
    try:
        results = [bat.slow_square.delay(x) for x in range(4)]
        child = int(wait_for(lambda: r.lindex("slow_square:started", 0), timeout=20, what="batch start"))
        r.set("slow_square:seconds", 0)
        os.kill(child, signal.SIGKILL)
        # Celery requeues each input (task_reject_on_worker_lost); a new child runs them.
        assert [res.get(timeout=30) for res in results] == [0, 1, 4, 9]
        ran = {int(k): int(v) for k, v in r.hgetall("slow_square:ran").items()}
        assert ran == {0: 1, 1: 1, 2: 1, 3: 1}  # the killed batch never finished; each ran once
        assert r.llen("slow_square:started") >= 2
    finally:
        worker.stop()


def test_revoked_input_is_left_out_of_its_batch(bat: Any, threads_worker: Worker) -> None:
    bat.app.redis.delete("calls:scaled")
    first = bat.scaled.delay(1, 1, offset=0)
    gone = bat.scaled.delay(2, 1, offset=0)
    gone.revoke()
    last = bat.scaled.delay(3, 1, offset=0)
    assert (first.get(timeout=20), last.get(timeout=20)) == (1, 3)
    with pytest.raises(TaskRevokedError):
        gone.get(timeout=10)
    assert sorted(x for c in calls(bat, "scaled") for x in c["inputs"]) == [1, 3]


def test_async_batched_task_on_gevent(bat: Any, redis_url: str, tmp_path: Path) -> None:
    worker = Worker("tests.apps.batch_app", "gevent", redis_url, tmp_path, concurrency=10, name="bgevent")
    worker.start(bat.app)
    try:
        results = [bat.echo_async.delay(w) for w in ("a", "b", "c", "d", "e", "f", "g")]
        assert [r.get(timeout=20) for r in results] == ["A", "B", "C", "D", "E", "F", "G"]
        sizes = [c["size"] for c in calls(bat, "echo_async")]
        assert sorted(sizes) == [2, 5], sizes  # one full batch by size, the rest after wait_ms
    finally:
        worker.stop()


def test_autoscaler_counts_a_batch_once(bat: Any, redis_url: str, tmp_path: Path) -> None:
    """Eight buffered or running inputs of one batch need one pool slot, not eight."""
    # A queue of its own: the module's threads worker must not take half the inputs.
    args = ("--autoscale=8,1", "-Q", "bat.scale")
    worker = Worker("tests.apps.batch_app", "threads", redis_url, tmp_path, name="bscale", extra_args=args)
    worker.start(bat.app)
    try:
        results = [bat.slow_batch.apply_async((x,), queue="bat.scale") for x in range(8)]
        assert [r.get(timeout=30) for r in results] == list(range(8))
        assert [c["size"] for c in calls(bat, "slow_batch")] == [8]
        stats = bat.app.control.inspect(destination=[worker.hostname], timeout=5).stats()[worker.hostname]
        scaler = stats["autoscaler"]
        moves = [(d["from"], d["to"], d["reason"]) for d in scaler["decisions"]]
        assert moves, scaler  # the eight inputs made it grow at least once
        # Running and reserved inputs of the batch count as one slot. Messages still in Redis
        # (a loaded machine fetches them late) count one each: the queue's depth cannot tell
        # which task a message is for, so only the worker-side figures are asserted.
        counted = [
            tuple(map(int, m)) for _, _, r in moves for m in re.findall(r"(\d+) running, (\d+) reserved", r)
        ]
        assert counted and all(running + reserved <= 1 for running, reserved in counted), moves
    finally:
        worker.stop()
