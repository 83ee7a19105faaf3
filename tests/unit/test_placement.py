"""The holding rule (issue 17): a worker holds a waiting request only while that is useful.

First the rule alone (:mod:`taskpool.worker.placement`: bounds, surplus, room, marks, re-offers),
then through the gate over the fake consumer of ``consumer_fakes`` and in-memory semaphores
(``test_gate.Harness``), with a fake hand-back in place of kombu's and a fake board of peers in
place of Redis. No broker, no Redis.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from celery.worker import state as celery_state

from taskpool.core.batch import Batch
from taskpool.core.limits import Need
from taskpool.worker.batcher import Batcher
from taskpool.worker.placement import MARK_TTL, Placement, bound, is_surplus, room_for, surplus_flags
from tests.unit.consumer_fakes import FakeRequest, fake_task
from tests.unit.test_gate import Harness

GPU = Need("gpu:a", 1, 1, "gpu")
GPU2 = Need("gpu:b", 2, 1, "gpu")
WIDE = Need("gpu:c", 4, 2, "gpu")  # 4 slots, 2 per request
CAP = Need("task:t", 2, 1, "cluster_max_in_flight")


# -- the rule alone ---------------------------------------------------------------------------
def test_bound_is_the_requests_a_semaphore_runs_at_once() -> None:
    assert (bound(GPU), bound(GPU2), bound(WIDE), bound(CAP)) == (1, 2, 2, 2)


def test_surplus_is_what_waits_beyond_the_line_of_each_semaphore() -> None:
    waiting = [[GPU], [GPU], [CAP], [GPU, CAP], [CAP], [GPU2]]
    assert surplus_flags(waiting) == [False, True, False, True, True, False]
    assert is_surplus([GPU], {"gpu:a": 1}) and not is_surplus([GPU], {})
    assert room_for([GPU2, CAP], {"task:t": 1}) == 1
    assert room_for([GPU], {"gpu:a": 3}) == 0 and room_for([], {}) == 0
    # Its own GPUs' free slots count: a request offered for one starts at once.
    assert room_for([GPU2], {}, {}) == 4 and room_for([GPU2], {"gpu:b": 1}, {"gpu:b": 2}) == 1
    assert room_for([WIDE], {}, {"gpu:c": 2}) == 3
    assert room_for([CAP], {}, {}) == 2  # a shared semaphore's free slots are not known here


def peer(
    seq: int = 1, room: dict[str, int] | None = None, queues: tuple[str, ...] = ("q",)
) -> dict[str, Any]:
    """A peer's record, as :class:`~taskpool.stores.peers.PeerBoard` reads it."""
    return {"node": "b@test", "queues": list(queues), "room": room or {}, "seq": seq}


def test_peers_are_the_other_workers_records() -> None:
    p = Placement("me")
    p.update_peers({"me": peer(room={"t": 5}), "b": peer(room={"t": 1}), "bad": {"room": "x"}})
    assert [x.owner for x in p.peers()] == ["b"]  # not itself; an unreadable record is skipped
    assert p.room_elsewhere("t", "q") == 1
    assert p.room_elsewhere("t", "other") == 0 and p.room_elsewhere("u", "q") == 0
    assert p.room_elsewhere("t", None) == 0


def test_a_request_handed_back_that_comes_back_is_kept() -> None:
    now = [0.0]
    p = Placement("me", clock=lambda: now[0])
    assert p.offer_at_receipt("t1") is True  # surplus, a peer has room: hand it back
    assert p.offer_at_receipt("t1") is False  # it came back: no one else took it
    assert p.offer_at_receipt("t1") is True  # kept once; a later arrival is a new offer
    now[0] += MARK_TTL + 1
    assert p.offer_at_receipt("t1") is True  # the mark expired: a new offer


def test_a_reoffered_request_that_comes_back_is_passed_on_once_more() -> None:
    p = Placement("me")
    p.note_reoffered("t1")  # handed back outside the read: its own BRPOP may have been the oldest
    assert p.offer_at_receipt("t1") is True  # ... so from the read, once more
    assert p.offer_at_receipt("t1") is False  # then kept


def test_reoffers_go_to_peers_with_room_once_per_record() -> None:
    p = Placement("me")
    p.update_peers({"b": peer(seq=1, room={"t": 2}), "c": peer(seq=7, room={"u": 1}, queues=("r",))})
    candidates = [("w1", "t", "q"), ("w2", "t", "q"), ("w3", "t", "q"), ("w4", "u", "q"), ("w5", "u", "r")]
    assert p.pick_reoffers(candidates) == ["w1", "w2", "w5"]  # b's room for t; c's for u on r
    assert p.pick_reoffers(candidates) == []  # nothing more until they publish again
    p.update_peers({"b": peer(seq=2, room={"t": 1}), "c": peer(seq=7, room={"u": 1}, queues=("r",))})
    assert p.pick_reoffers(candidates) == ["w1"]


# -- through the gate -----------------------------------------------------------------------------
class FakeBoard:
    """The peers' records (``taskpool.stores.peers.PeerBoard`` without Redis)."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.published: list[dict[str, Any]] = []

    def publish(self, record: dict[str, Any]) -> None:
        self.published.append(record)

    def read(self) -> dict[str, dict[str, Any]]:
        return dict(self.records)

    def withdraw(self) -> None:
        self.records.clear()


class Requeue:
    """Stands for ``compat.kombu.requeue_at_head``: records each message put back."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.fail = False

    def __call__(self, message: Any) -> bool:
        if self.fail:
            raise ConnectionError("redis is down")
        self.messages.append(message)
        return True


def spread_harness(**tasks: Any) -> tuple[Harness, Requeue, FakeBoard]:
    """A gate with a board and a hand-back, on an app that declares ``tasks`` and consumes "q"."""
    h = Harness()
    requeue, board = Requeue(), FakeBoard()
    h.gate._requeue = requeue
    h.gate.board = board  # type: ignore[assignment]
    h.gate.app = SimpleNamespace(
        settings=SimpleNamespace(keyspace="test", queue_for=lambda pool, gpu=False: "q"),
        tasks={t.name: t for t in tasks.values()},
        amqp=SimpleNamespace(queues=SimpleNamespace(consume_from={"q": object()})),
    )
    return h, requeue, board


def test_alone_a_worker_holds_every_waiting_request_as_before() -> None:
    task = fake_task(max_in_flight=1)
    h, requeue, _ = spread_harness(t=task)
    requests = [h.request(task) for _ in range(4)]
    for r in requests:
        h.gate.admit(r)
    assert h.consumer.dispatched == requests[:1] and h.gate.waiting_count() == 3
    assert requeue.messages == [] and h.consumer.qos.lent == 3  # other work keeps flowing


def test_surplus_goes_back_when_a_peer_has_room_and_stays_when_it_comes_back() -> None:
    task = fake_task(max_in_flight=1)
    h, requeue, _ = spread_harness(t=task)
    h.gate.placement.update_peers({"b": peer(room={task.name: 1})})
    running, next_in_line, surplus = (h.request(task) for _ in range(3))
    for r in (running, next_in_line, surplus):
        celery_state.task_reserved(r)  # what Celery's strategy does before the gate
        h.gate.admit(r)
    assert h.consumer.dispatched == [running]
    assert [w[0] for w in h.gate.info()["waiting"]] == [next_in_line.id]  # the line: one per slot
    assert requeue.messages == [surplus.message]
    assert surplus not in celery_state.reserved_requests  # no longer this worker's
    assert h.consumer.qos.lent == 1 and h.gate.stats["handed_back"] == 1
    # No other worker took it: the same message comes back here, and it stays.
    again = FakeRequest(task, id=surplus.id, pool=h.view.pool)
    h.gate.admit(again)
    assert requeue.messages == [surplus.message] and h.gate.stats["kept"] == 1
    assert [w[0] for w in h.gate.info()["waiting"]] == [next_in_line.id, surplus.id]
    assert h.gate.info()["bounds"] == {f"node:worker@test:task:{task.name}": 1}
    # Its slot frees: the next in line runs, then the kept one.
    h.finish(running)
    h.hub.run()  # type: ignore[union-attr]
    h.finish(next_in_line)
    h.hub.run()  # type: ignore[union-attr]
    assert h.consumer.dispatched == [running, next_in_line, again] and h.consumer.qos.lent == 0


def test_no_hand_back_for_a_peer_on_another_queue_or_without_room() -> None:
    task = fake_task(max_in_flight=1)
    h, requeue, _ = spread_harness(t=task)
    h.gate.placement.update_peers({"b": peer(room={task.name: 1}, queues=("other",)), "c": peer(room={})})
    for _ in range(3):
        h.gate.admit(h.request(task))
    assert requeue.messages == [] and h.gate.waiting_count() == 2


def test_a_request_that_cannot_be_handed_back_waits_here() -> None:
    task = fake_task(max_in_flight=1)
    h, requeue, _ = spread_harness(t=task)
    h.gate.placement.update_peers({"b": peer(room={task.name: 1})})
    requeue.fail = True
    for _ in range(3):
        h.gate.admit(h.request(task))
    assert h.gate.waiting_count() == 2 and h.gate.stats["handed_back"] == 0


def test_a_batch_is_never_handed_back() -> None:
    task = fake_task(max_in_flight=1, batch=Batch(max_size=1, wait_ms=10))
    h, requeue, _ = spread_harness(t=task)
    h.gate.placement.update_peers({"b": peer(room={task.name: 5})})
    batcher = Batcher(task, h.consumer, h.view.pool.apply_async, h.gate.admit)
    for _ in range(3):
        batcher.add(h.request(task))
    assert requeue.messages == [] and h.gate.waiting_count() == 2


def test_the_placement_tick_publishes_room_and_reoffers_surplus_to_a_peer_with_room() -> None:
    task = fake_task(max_in_flight=1)
    h, requeue, board = spread_harness(t=task)
    h.gate.placement_tick()
    (record,) = board.published
    # Its slot is free: one request would start at once, one more line up.
    assert record["room"] == {task.name: 2} and record["queues"] == ["q"] and record["node"] == "worker@test"
    requests = [h.request(task) for _ in range(4)]
    for r in requests:
        h.gate.admit(r)  # no peer yet: 1 runs, 3 wait here (1 next in line, 2 surplus)
    h.gate.placement_tick()
    assert board.published[-1]["room"] == {}  # its own line is full now
    board.records = {"b": peer(seq=1, room={task.name: 1})}  # a worker with room appears
    h.gate._next_read = 0.0  # (peers are read every half second)
    h.gate.placement_tick()
    assert requeue.messages == []  # the re-offer runs on the event loop
    h.hub.run()  # type: ignore[union-attr]
    assert requeue.messages == [requests[2].message]  # the oldest surplus request
    assert h.gate.stats["reoffered"] == 1 and h.consumer.qos.lent == 2
    h.gate.placement_tick()
    h.hub.run()  # type: ignore[union-attr]
    assert len(requeue.messages) == 1  # b has not published again
    # The re-offer came back here (this worker's own BRPOP was the oldest): passed on once more.
    back = FakeRequest(task, id=requests[2].id, pool=h.view.pool)
    h.gate.admit(back)
    assert requeue.messages[-1] is back.message and h.gate.stats["handed_back"] == 2


def test_no_room_while_the_prefetch_window_is_full() -> None:
    task = fake_task(max_in_flight=1)
    h, _, _ = spread_harness(t=task)
    assert h.gate.room() == {task.name: 2}
    channel = SimpleNamespace(qos=SimpleNamespace(can_consume=lambda: False))
    h.consumer.task_consumer = SimpleNamespace(channel=channel)  # type: ignore[attr-defined]
    assert h.gate.room() == {}


def test_info_counts_the_peers() -> None:
    h, _, _ = spread_harness()
    h.gate.placement.update_peers({"b": peer(), "c": peer()})
    assert h.gate.info()["peers"] == 2


def test_without_an_event_loop_the_placement_thread_reoffers_itself() -> None:
    task = fake_task(max_in_flight=1)
    h, requeue, board = spread_harness(t=task)
    h.gate._hub = None  # gevent: Celery's synloop, no hub
    requests = [h.request(task) for _ in range(3)]
    for r in requests:
        h.gate.admit(r)
    board.records = {"b": peer(seq=1, room={task.name: 1})}
    h.gate.placement_tick()
    assert requeue.messages == [requests[2].message] and h.gate.waiting_count() == 1
