"""The batcher in the worker's main process, with a fake consumer: no broker, no Redis."""

from __future__ import annotations

from typing import Any

import pytest

from taskpool.core.batch import Batch
from taskpool.core.names import GPUS_KEY, LEASES_KEY
from taskpool.runtime.batch import run_batch
from taskpool.worker import state
from taskpool.worker.batcher import Batcher, BatchRequest, members_of
from taskpool.worker.batching import BatchingStep, batch_discount
from tests.unit.consumer_fakes import FakeConsumer, FakeRequest, fake_task


def make(max_size: int = 3, wait_ms: int = 50, processes: int = 2) -> tuple[Batcher, FakeConsumer, list[Any]]:
    consumer = FakeConsumer(processes=processes)
    task = fake_task(batch=Batch(max_size=max_size, wait_ms=wait_ms))
    flushed: list[Any] = []

    def dispatch(batch: Any) -> None:
        flushed.append(batch)
        batch.execute_using_pool(consumer.pool)

    return Batcher(task, consumer, consumer.pool.apply_async, dispatch), consumer, flushed


def test_flushes_when_max_size_inputs_arrived() -> None:
    batcher, consumer, flushed = make(max_size=3)
    requests = [FakeRequest(batcher.task) for _ in range(3)]
    for r in requests[:2]:
        batcher.add(r)
    assert flushed == [] and batcher.buffered() == 2
    assert len(consumer.timer.pending()) == 1  # armed by the first input
    batcher.add(requests[2])
    assert [b.members for b in flushed] == [requests]
    assert batcher.buffered() == 0
    assert consumer.timer.pending() == []  # the flush cancelled the wait
    assert batcher.stats == {"batches": 1, "inputs": 3, "largest": 3}


def test_flushes_when_the_wait_timer_fires() -> None:
    batcher, consumer, flushed = make(max_size=10, wait_ms=250)
    requests = [FakeRequest(batcher.task) for _ in range(2)]
    for r in requests:
        batcher.add(r)
    (entry,) = consumer.timer.pending()
    assert entry.seconds == 0.25
    consumer.timer.fire()
    assert [b.members for b in flushed] == [requests]
    # The callback cleared its own entry before flushing: on gevent, cancelling the running
    # entry would kill the callback's greenlet.
    assert not entry.cancelled
    batcher.add(FakeRequest(batcher.task))
    assert len(consumer.timer.pending()) == 1  # a new batch arms a new timer


def test_a_flush_is_one_pool_job_whose_callbacks_reach_every_input() -> None:
    batcher, consumer, flushed = make(max_size=2)
    requests = [FakeRequest(batcher.task) for _ in range(2)]
    for r in requests:
        batcher.add(r)
    (batch,) = flushed
    (job,) = consumer.pool.jobs
    assert job["target"] is run_batch
    assert job["correlation_id"] == batch.id
    _trace, name, items, gpus, leases = job["args"]
    assert name == batcher.task.name and [item[1] for item in items] == [r.id for r in requests]
    assert (gpus, leases) == ([], None)
    assert batcher.running == {batch}
    job["accept_callback"](1234, 0.0)
    assert batch.accepted
    job["callback"](["a", "b"])
    assert [r.events for r in requests] == [
        [("accepted", 1234), ("success", "a")],
        [("accepted", 1234), ("success", "b")],
    ]
    assert batcher.running == set()


def test_the_granted_leases_and_gpus_travel_with_the_batch() -> None:
    batcher, consumer, _ = make(max_size=1)
    batch = BatchRequest(batcher, [FakeRequest(batcher.task)])
    state.set_granted(batch, [["gpu:host", 2, "tok"]], [1])
    assert batch.request_dict == {LEASES_KEY: [["gpu:host", 2, "tok"]], GPUS_KEY: [1]}
    batch.execute_using_pool(consumer.pool)
    *_, gpus, leases = consumer.pool.jobs[0]["args"]
    assert (gpus, leases) == ([1], [["gpu:host", 2, "tok"]])


def test_prefetch_loans_are_capped_and_end_when_each_input_is_done() -> None:
    batcher, consumer, flushed = make(max_size=4, processes=1)  # at most 4 x 1 lent
    requests = [FakeRequest(batcher.task) for _ in range(6)]
    for r in requests:
        batcher.add(r)
    assert batcher.max_lent == 4
    assert consumer.qos.lent == 4 and batcher.lent == 4
    assert [state.batch_lent(r) for r in requests] == [True] * 4 + [False] * 2
    flushed[0].on_success(["r"] * 4)  # the first batch's inputs are acked: their loans end
    assert consumer.qos.lent == 0 and batcher.lent == 0
    assert not any(state.batch_lent(r) for r in requests)
    batcher.done(requests[0])  # a second "done" is no second decrement
    assert consumer.qos.lent == 0


def test_a_failed_pool_job_fails_each_input_on_its_own() -> None:
    batcher, consumer, _ = make(max_size=2)
    requests = [FakeRequest(batcher.task) for _ in range(2)]
    for r in requests:
        batcher.add(r)
    consumer.pool.jobs[0]["error_callback"]("exc-info")
    assert [r.events for r in requests] == [[("failure", "exc-info")]] * 2
    assert consumer.qos.lent == 0 and batcher.running == set()


def test_revoked_inputs_are_dropped_at_the_flush() -> None:
    batcher, consumer, flushed = make(max_size=3)
    alive, revoked = FakeRequest(batcher.task), FakeRequest(batcher.task, is_revoked=True)
    batcher.add(alive)
    batcher.add(revoked)
    consumer.timer.fire()
    assert [b.members for b in flushed] == [[alive]]
    assert not state.batch_lent(revoked)  # its loan ended: Celery acks a revoked request
    assert consumer.qos.lent == 1
    assert batcher.stats["inputs"] == 1


def test_a_batch_of_revoked_inputs_is_not_sent() -> None:
    batcher, consumer, flushed = make(max_size=2)
    for _ in range(2):
        batcher.add(FakeRequest(batcher.task, is_revoked=True))
    assert flushed == [] and consumer.pool.jobs == []
    assert consumer.qos.lent == 0 and batcher.running == set()


def test_inputs_go_back_to_the_queue_when_the_batch_cannot_start() -> None:
    consumer = FakeConsumer()
    task = fake_task(batch=Batch(max_size=2, wait_ms=10))

    def dispatch(batch: Any) -> None:
        raise RuntimeError("pool closed")

    batcher = Batcher(task, consumer, consumer.pool.apply_async, dispatch)
    requests = [FakeRequest(task) for _ in range(2)]
    for r in requests:
        batcher.add(r)
    assert [r.events for r in requests] == [[("reject", True)]] * 2
    assert consumer.qos.lent == 0 and batcher.running == set()


def test_connection_lost_hands_back_the_buffered_inputs() -> None:
    batcher, consumer, flushed = make(max_size=5)
    requests = [FakeRequest(batcher.task) for _ in range(3)]
    for r in requests:
        batcher.add(r)
    (entry,) = consumer.timer.pending()
    assert batcher.connection_lost() == requests
    assert entry.cancelled and batcher.buffered() == 0 and flushed == []
    # Lent on the old channel's QoS; the new connection has its own.
    assert batcher.lent == 0 and not any(state.batch_lent(r) for r in requests)


def test_the_batching_step_owns_the_batchers_and_restores_dropped_inputs() -> None:
    consumer = FakeConsumer()
    step = BatchingStep(consumer)
    assert state.batchers_of(consumer) == {}
    step.create(consumer)
    batcher, _, _ = make(max_size=5)
    batcher.consumer = consumer
    state.register_batcher(consumer, batcher)
    assert state.batchers_of(consumer) == {batcher.task.name: batcher}
    requests = [FakeRequest(batcher.task) for _ in range(2)]
    for r in requests:
        batcher.add(r)
    assert step.info(consumer)["taskpool_batches"][batcher.task.name]["buffered"] == 2
    step.stop(consumer)
    restored: list[str] = []
    consumer.task_consumer = type("C", (), {"channel": type("Ch", (), {})()})()  # type: ignore[attr-defined]
    consumer.task_consumer.channel.qos = type("Q", (), {"restore_by_tag": staticmethod(restored.append)})()
    step.start(consumer)
    assert restored == [r.message.delivery_tag for r in reversed(requests)]  # each to its queue's head


def test_register_batcher_needs_the_step() -> None:
    batcher, consumer, _ = make()
    with pytest.raises(RuntimeError, match="BatchingStep"):
        state.register_batcher(consumer, batcher)


def test_discount_counts_a_batch_once() -> None:
    batcher, consumer, flushed = make(max_size=3)
    for _ in range(5):  # one batch of 3 flushed, 2 buffered
        batcher.add(FakeRequest(batcher.task))
    # buffered 2 (+1 incoming) = one batch of 3: 2 extra reserved; the flushed 3: 2 extra reserved.
    assert batcher.discount(incoming=1) == (0, 2 + 2)
    flushed[0].on_accepted(1, 0.0)
    assert batcher.discount() == (2, 1)
    worker = type("W", (), {"consumer": consumer})()
    state.set_batchers(consumer, {batcher.task.name: batcher})
    assert batch_discount(worker) == (2, 1)
    assert batch_discount(object()) == (0, 0)


def test_members_of() -> None:
    batcher, _, _ = make()
    requests = [FakeRequest(batcher.task) for _ in range(2)]
    assert list(members_of(requests[0])) == [requests[0]]
    assert list(members_of(BatchRequest(batcher, requests))) == requests
