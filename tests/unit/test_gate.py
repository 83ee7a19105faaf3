"""The admission gate with a fake consumer and in-memory semaphores: no broker, no Redis.

The real semaphores are Lua scripts in Redis (their tests, and the gate's through real workers,
are the integration tests). Here :class:`FakeSemaphore` stands in for them, injected through
``Holdings.semaphore``, so what is tested is the gate's own logic: the consumer view, the order
of release and completion, first come first served among waiters, prefetch loans, refusal,
revocation and connection loss. The waiter thread (BLPOP on the semaphores' wake lists) is not
started: the fake hub runs the admission rounds a release schedules on the event loop.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from taskpool.core.batch import Batch
from taskpool.core.errors import ConfigurationError
from taskpool.core.limits import Need
from taskpool.core.names import LEASES_KEY
from taskpool.stores.semaphores import Lease
from taskpool.stores.semaphores.semaphore import Refusal
from taskpool.worker import state
from taskpool.worker.admission import AdmissionStep, _delivery_tags, waiting_count_of
from taskpool.worker.batcher import Batcher, BatchRequest
from taskpool.worker.gate import Gate, View
from tests.unit.consumer_fakes import FakeConsumer, FakeHub, FakeRequest, fake_task


class FakeSemaphore:
    """A counting semaphore in memory, with the methods the gate calls."""

    _tokens = itertools.count(1)

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self.ttl = 30.0
        self.keys = SimpleNamespace(wake=f"{name}:wake")
        self.holders: dict[str, Lease] = {}

    def set_capacity(self, capacity: int) -> None:
        self.capacity = capacity

    def free(self) -> int:
        return self.capacity - sum(lease.count for lease in self.holders.values())

    def try_acquire(self, owner: str, count: int = 1, task_id: str | None = None) -> Lease | None:
        if count > self.free():
            return None
        used = {s for lease in self.holders.values() for s in lease.slots}
        slots = tuple(s for s in range(self.capacity) if s not in used)[:count]
        lease = Lease(self.name, f"tok{next(self._tokens)}", owner, slots, 1, 0.0, task_id)
        self.holders[lease.token] = lease
        return lease

    def try_acquire_or_free(self, owner: str, count: int = 1, task_id: str | None = None) -> Lease | int:
        lease = self.try_acquire(owner, count, task_id)
        return lease if lease is not None else self.free()

    def attempt(
        self, owner: str, count: int, task_id: str | None, token: str, **queue: Any
    ) -> Lease | Refusal:
        """The gate's try (this fake keeps no queue of waiters: test_semaphores covers that)."""
        lease = self.try_acquire(owner, count, task_id)
        return lease if lease is not None else Refusal(None, self.free(), 1)

    def join(self, waiter: str, count: int, arrival_ms: int = 0) -> int:
        return arrival_ms or 1

    def leave(self, waiters: list[str]) -> int:
        return 0

    def release(self, lease: Lease, *, missing_ok: bool = False) -> bool:
        return self.holders.pop(lease.token, None) is not None


class Harness:
    """A gate over a fake consumer whose semaphores are :class:`FakeSemaphore`."""

    def __init__(self, *, hub: bool = True) -> None:
        app = SimpleNamespace(settings=SimpleNamespace(keyspace="test"))
        self.hub = FakeHub() if hub else None
        self.consumer = FakeConsumer(processes=2, hub=self.hub, app=app)
        self.refused: list[tuple[Any, ConfigurationError]] = []
        self.gate = Gate(
            app, self.consumer, client=None, ttl=30.0, on_refused=lambda r, e: self.refused.append((r, e))
        )  # type: ignore[arg-type]
        self.semaphores: dict[str, FakeSemaphore] = {}
        self.gate.holdings.semaphore = self.semaphore  # type: ignore[method-assign]
        self.view = self.gate.view()  # what the task strategy is built over

    def request(self, task: Any) -> FakeRequest:
        return FakeRequest(task, pool=self.view.pool)

    def semaphore(self, need: Need) -> FakeSemaphore:
        sem = self.semaphores.get(need.name)
        if sem is None:
            sem = self.semaphores[need.name] = FakeSemaphore(need.name, need.capacity)
        return sem

    def finish(self, request: Any, result: Any = "ok") -> None:
        """The pool reports ``request`` done: its (wrapped) success callback runs."""
        job = next(j for j in self.consumer.pool.jobs if j["correlation_id"] == request.id)
        job["callback"](result)


def test_the_view_admits_through_the_gate_and_wraps_the_pool() -> None:
    h = Harness()
    view = h.gate.view()
    assert view.on_task_request == h.gate.admit
    assert view.hostname == "worker@test"  # everything else is the consumer's
    assert view.pool.num_processes == 2
    assert view.pool.apply_async is not h.consumer.pool.apply_async
    task = fake_task(max_in_flight=1)
    request = h.request(task)
    view.on_task_request(request)
    assert h.consumer.dispatched == [request]
    ((name, capacity, token),) = request.request_dict[LEASES_KEY]  # for the pool process to free
    assert (name, capacity) == ("node:worker@test:task:tests.unit.job", 1)
    assert token in h.semaphores[name].holders


def test_a_request_waits_while_its_slot_is_taken_and_runs_when_it_is_freed() -> None:
    h = Harness()
    task = fake_task(max_in_flight=1)
    first, second = h.request(task), h.request(task)
    h.gate.admit(first)
    h.gate.admit(second)
    assert h.consumer.dispatched == [first]
    assert h.gate.waiting_count() == 1
    assert h.consumer.qos.lent == 1 and state.prefetch_lent(second)  # other work keeps flowing
    info = h.gate.info()
    assert [w[0] for w in info["waiting"]] == [second.id]
    assert list(info["held"]) == [first.id]
    # The pool's completion callback of the first: its slot goes to the waiter.
    h.finish(first)
    h.hub.run()  # type: ignore[union-attr]
    assert h.consumer.dispatched == [first, second]
    assert h.gate.waiting_count() == 0 and h.consumer.qos.lent == 0
    assert h.gate.stats["admitted"] == 2 and h.gate.stats["waited"] == 1 and h.gate.stats["released"] == 1


def test_the_slot_is_released_before_the_completion_handler_and_waiters_admitted_after_it() -> None:
    h = Harness()
    task = fake_task(max_in_flight=1)
    first, second = h.request(task), h.request(task)
    seen: list[tuple[int, list[Any]]] = []
    h.gate.admit(first)
    h.gate.admit(second)
    (sem,) = h.semaphores.values()
    first.on_success_hook = lambda: seen.append((sem.free(), list(h.consumer.dispatched)))
    h.finish(first)
    assert seen == [(1, [first])]  # released before Celery's handler ran; the waiter not yet in
    h.hub.run()  # type: ignore[union-attr]
    assert h.consumer.dispatched == [first, second]


def test_the_release_is_found_by_correlation_id_when_the_callback_is_not_a_request_method() -> None:
    h = Harness()
    task = fake_task(max_in_flight=1)
    request = h.request(task)
    h.gate.admit(request)
    h.consumer.pool.jobs.clear()
    done: list[Any] = []
    h.gate.view().pool.apply_async("job", callback=done.append, correlation_id=request.id)
    h.consumer.pool.jobs[0]["callback"]("ok")
    assert done == ["ok"] and h.gate.stats["released"] == 1


def test_waiters_are_served_first_come_first_served() -> None:
    h = Harness()
    narrow = fake_task("tests.unit.narrow", cluster_max_in_flight=1)
    a, b, c = h.request(narrow), h.request(narrow), h.request(narrow)
    for r in (a, b, c):
        h.gate.admit(r)
    assert h.consumer.dispatched == [a]
    h.finish(a)
    h.hub.run()  # type: ignore[union-attr]
    assert h.consumer.dispatched == [a, b]
    h.finish(b)
    h.hub.run()  # type: ignore[union-attr]
    assert h.consumer.dispatched == [a, b, c]


def test_a_newcomer_does_not_overtake_a_waiter_for_the_same_semaphore() -> None:
    h = Harness()
    task = fake_task(cluster_max_in_flight=2)
    held = h.request(task)
    h.gate.admit(held)
    (sem,) = h.semaphores.values()
    sem.capacity = 1  # another worker took the other slot meanwhile
    waiter = h.request(task)
    h.gate.admit(waiter)
    sem.capacity = 2  # ...and gave it back: a slot is free, but a waiter came first
    newcomer = h.request(task)
    h.gate.admit(newcomer)
    assert h.consumer.dispatched == [held]
    assert [w[0] for w in h.gate.info()["waiting"]] == [waiter.id, newcomer.id]


def test_a_request_that_can_never_run_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPOOL_GPUS", "1")
    h = Harness()
    task = fake_task(gpu_slots=2)
    request = h.request(task)
    h.gate.admit(request)
    assert h.consumer.dispatched == [] and h.gate.waiting_count() == 0
    ((refused, exc),) = h.refused
    assert refused is request and "gpu_slots=2" in str(exc)
    assert h.gate.stats["failed_admission"] == 1


def test_a_refused_batch_refuses_each_input_and_ends_its_loans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPOOL_GPUS", "0")
    h = Harness()
    task = fake_task(gpu_slots=1, batch=Batch(max_size=2, wait_ms=10))
    batcher = Batcher(task, h.consumer, h.gate.view().pool.apply_async, h.gate.admit)
    inputs = [h.request(task), h.request(task)]
    for r in inputs:
        batcher.add(r)
    assert [r for r, _ in h.refused] == inputs
    assert h.consumer.qos.lent == 0 and h.gate.stats["failed_admission"] == 2


def test_a_request_revoked_while_it_waited_gives_its_slots_back() -> None:
    h = Harness()
    task = fake_task(max_in_flight=1)
    first, second = h.request(task), h.request(task)
    h.gate.admit(first)
    h.gate.admit(second)
    second.is_revoked = True
    h.finish(first)
    h.hub.run()  # type: ignore[union-attr]
    assert h.consumer.dispatched == [first]
    (sem,) = h.semaphores.values()
    assert sem.free() == 1 and h.gate.holdings.delivery_keys() == []


def test_connection_lost_drops_the_waiters_and_the_step_restores_their_messages() -> None:
    h = Harness()
    task = fake_task(max_in_flight=1)
    running, waiting = h.request(task), h.request(task)
    h.gate.admit(running)
    h.gate.admit(waiting)
    step = AdmissionStep(h.consumer)  # declares consumer.taskpool_gate (None)
    assert state.gate_of(h.consumer) is None
    state.set_gate(h.consumer, h.gate)  # as its create() does for an app with limited tasks
    step.stop(h.consumer)  # the consumer's blueprint stops its steps before it reconnects
    assert h.gate.waiting_count() == 0 and h.gate.stats["dropped_at_reconnect"] == 1
    assert h.gate._held_extra == 0  # lent on the old channel's QoS
    (sem,) = h.semaphores.values()
    assert sem.free() == 0  # the running request keeps its slot across the reconnect
    restored: list[str] = []
    channel = SimpleNamespace(qos=SimpleNamespace(restore_by_tag=restored.append))
    h.consumer.task_consumer = SimpleNamespace(channel=channel)  # type: ignore[attr-defined]
    h.gate.start = lambda: None  # type: ignore[method-assign]  # no threads in a unit test
    step.start(h.consumer)
    assert restored == [waiting.message.delivery_tag]
    assert step.info(h.consumer)["taskpool_admission"]["held"] == {running.id: [(sem.name, [0], 1)]}


def test_a_batch_dropped_at_a_connection_loss_restores_each_input() -> None:
    task = fake_task(batch=Batch(max_size=2, wait_ms=10), max_in_flight=1)
    batcher = Batcher(task, FakeConsumer(), lambda *a, **k: None, lambda b: None)
    inputs = [FakeRequest(task), FakeRequest(task)]
    plain = FakeRequest(task)
    tags = _delivery_tags([BatchRequest(batcher, inputs), plain])
    assert tags == [r.message.delivery_tag for r in (*inputs, plain)]


def test_waiting_count_of_a_worker() -> None:
    h = Harness()
    task = fake_task(max_in_flight=1)
    for _ in range(3):
        h.gate.admit(h.request(task))
    worker = SimpleNamespace(consumer=h.consumer)
    assert waiting_count_of(worker) == 0  # no gate declared on the consumer yet
    state.set_gate(h.consumer, h.gate)
    assert waiting_count_of(worker) == 2


def test_without_a_hub_a_release_leaves_admission_to_the_waiter_thread() -> None:
    h = Harness(hub=False)
    task = fake_task(max_in_flight=1)
    first, second = h.request(task), h.request(task)
    h.gate.admit(first)
    h.gate.admit(second)
    h.finish(first)
    assert h.consumer.dispatched == [first]  # nothing on this thread: the waiter thread admits
    assert h.gate._admit_round(on_loop=False) is True  # what the waiter thread's round does
    assert h.consumer.dispatched == [first, second]


def test_close_gives_back_every_slot() -> None:
    h = Harness()
    task = fake_task(cluster_max_in_flight=3)
    for _ in range(3):
        h.gate.admit(h.request(task))
    (sem,) = h.semaphores.values()
    assert sem.free() == 0
    h.gate.close()
    assert sem.free() == 3 and h.gate.holdings.delivery_keys() == []


def test_view_overrides_only_what_it_names() -> None:
    target = SimpleNamespace(a=1, b=2)
    view = View(target, b=3)
    assert (view.a, view.b) == (1, 3)
