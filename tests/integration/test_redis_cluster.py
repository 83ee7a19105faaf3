"""taskpool's state on a real Redis Cluster (three masters, ``redis.cluster.RedisCluster``):
semaphores, blocking wake-ups, rates across slots (all or none), one admission decision through
``Holdings.take``, and the dead-letter, peer and fleet stores. A call whose keys span slots
fails on Cluster (CROSSSLOT, or redis-py's "all keys must map to the same key slot"), so each
test passing shows its calls are one slot each.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis.crc import key_slot

from taskpool.core import names
from taskpool.core.limits import Need
from taskpool.core.rates import RateNeed, interval_ms
from taskpool.ops.embedded import ClusterGroup
from taskpool.stores.dead_letters import DeadLetter, DeadLetterStore
from taskpool.stores.fleet import FleetStore
from taskpool.stores.peers import PeerBoard
from taskpool.stores.rates import RateRefusal, Rates
from taskpool.stores.semaphores import Lease, Semaphore, SemaphoreKeys, holders_of, semaphore_names
from taskpool.worker.holdings import Holdings, wake_keys_for
from taskpool.worker.waits import Wait

DEADLINE = 20.0  # seconds a test waits for a wake-up before it fails


@pytest.fixture
def cluster(redis_cluster: ClusterGroup) -> Iterator[Any]:
    client = redis_cluster.client()
    yield client
    client.close()


@pytest.fixture
def keyspace() -> str:
    return f"tp-{uuid.uuid4().hex[:8]}"


def node_of(client: Any, key: str) -> str:
    return str(client.get_node_from_key(key).name)


def spread(client: Any, make_key: Any, candidates: list[str], count: int = 2) -> list[str]:
    """``count`` of ``candidates`` whose keys (``make_key(name)``) live on different nodes."""
    chosen: dict[str, str] = {}
    for name in candidates:
        chosen.setdefault(node_of(client, make_key(name)), name)
    assert len(chosen) >= count, "the names all hash to one node: add candidates"
    return list(chosen.values())[:count]


def sem_name(tag: str) -> str:
    return names.limit_semaphore(f"tenant:{tag}")


def test_the_cluster_has_three_masters(cluster: Any) -> None:
    assert len(cluster.get_primaries()) == 3


def test_semaphores_acquire_and_release_on_every_node(cluster: Any, keyspace: str) -> None:
    tags = [f"t{i}" for i in range(30)]
    chosen = spread(cluster, lambda t: SemaphoreKeys.for_name(sem_name(t), keyspace).wake, tags, 3)
    sems = [Semaphore(cluster, sem_name(tag), 2, ttl=30, keyspace=keyspace) for tag in chosen]
    held = [sem.acquire("host:9") for sem in sems]
    # The readers of `taskpool status` and `taskpool slots` find them on every node.
    assert semaphore_names(cluster, keyspace) == sorted(sem_name(t) for t in chosen)
    assert all(len(holders_of(cluster, sem.name, keyspace)) == 1 for sem in sems)
    for sem, lease in zip(sems, held, strict=True):
        sem.release(lease)
    for sem in sems:
        a = sem.acquire("host:1", task_id="a")
        b = sem.try_acquire("host:1", task_id="b")
        assert b is not None and sem.try_acquire("host:1") is None
        assert sem.renew(a) > 0
        assert sorted(str(h.task_id) for h in sem.holders()) == ["a", "b"]
        assert sem.release(a) and sem.release_owner("host:1") == 1
        assert sem.reap_expired() == [] and sem.holders() == []


def test_a_release_wakes_a_blocked_acquire_through_the_wake_list(cluster: Any, keyspace: str) -> None:
    sem = Semaphore(cluster, sem_name("wake"), 1, ttl=30, keyspace=keyspace, poll_interval=3600)
    held = sem.acquire("host:1")
    got: list[Lease] = []
    waiting = threading.Thread(target=lambda: got.append(sem.acquire("host:2", timeout=DEADLINE)))
    waiting.start()
    sem.release(held)
    waiting.join(DEADLINE + 5)
    assert len(got) == 1 and got[0].owner == "host:2"  # woken, not polled: poll_interval is an hour
    sem.release(got[0])


def test_the_gates_blpop_keeps_to_one_slot_and_a_release_there_wakes_it(cluster: Any, keyspace: str) -> None:
    tags = [f"w{i}" for i in range(30)]
    first, other = spread(cluster, lambda t: SemaphoreKeys.for_name(sem_name(t), keyspace).wake, tags)
    sems = {t: Semaphore(cluster, sem_name(t), 1, ttl=30, keyspace=keyspace) for t in (first, other)}
    wakes = [sems[first].wake_key("host:2"), sems[other].wake_key("host:2")]
    assert key_slot(wakes[0].encode()) != key_slot(wakes[1].encode())
    keys = wake_keys_for(cluster, wakes)
    assert keys == [wakes[0]]  # the oldest waiter's list only: a two-slot BLPOP is refused
    holders = {t: s.acquire("host:1") for t, s in sems.items()}
    for s in sems.values():
        s.join("host:2|d1", 1)  # worker host:2 waits in both lines
    popped: list[Any] = []
    blocked = threading.Thread(target=lambda: popped.append(cluster.blpop(keys, timeout=DEADLINE)))
    blocked.start()
    sems[first].release(holders[first])
    blocked.join(DEADLINE + 5)
    assert popped and popped[0] is not None and popped[0][0].decode() == wakes[0]
    for s in sems.values():
        s.leave(["host:2|d1"])
    sems[other].release(holders[other])


def test_rates_across_slots_are_all_or_none(cluster: Any, keyspace: str) -> None:
    names_ = [f"api:{i}" for i in range(30)]
    a, b = sorted(
        spread(cluster, lambda n: names.rate_key(n, keyspace), names_),
        key=lambda n: key_slot(names.rate_key(n, keyspace).encode()),
    )
    hourly = interval_ms("1/h")
    need_a, need_b = RateNeed(a, hourly, "1/h"), RateNeed(b, hourly, "1/h")
    rates = Rates(cluster, keyspace)
    assert isinstance(rates.take([need_b]), float)  # b's only token this hour
    refused = rates.take([need_a, need_b])  # a (first slot) is taken, then b refuses: a refunded
    assert isinstance(refused, RateRefusal) and refused.blocking == need_b and refused.wait > 0
    assert cluster.get(names.rate_key(a, keyspace)) is None
    assert isinstance(rates.take([need_a]), float)  # a's token is still there
    assert isinstance(rates.take([need_a, need_b]), RateRefusal)
    rates.refund([need_a, need_b])
    assert isinstance(rates.take([need_b, need_a]), float)  # both given back at once


def test_rates_across_slots_hold_under_contention(cluster: Any, keyspace: str) -> None:
    """Threads take [a, b] and [b] at once, a and b on two nodes, one token each per hour: b is
    granted exactly once, a at most once, and a refused [a, b] leaves no token of a taken."""
    a, b = spread(cluster, lambda n: names.rate_key(n, keyspace), [f"api:{i}" for i in range(30)])
    hourly = interval_ms("1/h")
    need_a, need_b = RateNeed(a, hourly, "1/h"), RateNeed(b, hourly, "1/h")
    requests = [[need_a, need_b], [need_b], [need_b, need_a]] * 6
    results: list[tuple[list[RateNeed], object]] = []
    start = threading.Barrier(len(requests))

    def take(needs: list[RateNeed]) -> None:
        rates = Rates(cluster, keyspace)
        start.wait(DEADLINE)
        results.append((needs, rates.take(needs)))

    threads = [threading.Thread(target=take, args=(r,)) for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert len(results) == len(requests)
    granted = [needs for needs, out in results if isinstance(out, float)]
    assert len(granted) == 1  # b's single token
    a_granted = sum(need_a in needs for needs in granted)
    assert (cluster.get(names.rate_key(a, keyspace)) is not None) == bool(a_granted)
    assert isinstance(Rates(cluster, keyspace).take([need_a]), RateRefusal if a_granted else float)


def test_one_admission_decision_with_a_keyed_limit_a_cluster_cap_and_rates(
    cluster: Any, keyspace: str
) -> None:
    holdings = Holdings(cluster, keyspace, 30, node="threads@host-a", owner="host-a:1")
    task = "tasks.call_api"
    needs = [
        Need(names.limit_semaphore("tenant:acme"), 1, 1, names.LIMIT),
        Need(names.task_semaphore(task, "acme"), 2, 1, names.CLUSTER_MAX_IN_FLIGHT),
        Need(names.node_semaphore("threads@host-a", task), 4, 1, names.MAX_IN_FLIGHT),
    ]
    assert len({node_of(cluster, SemaphoreKeys.for_name(n.name, keyspace).wake) for n in needs}) > 1
    fast = [RateNeed(f"api:{i}", interval_ms("1000/s"), "1000/s") for i in range(4)]
    hourly = [RateNeed(f"tenant:{i}", interval_ms("1/h"), "1/h") for i in range(6)]
    assert len({node_of(cluster, names.rate_key(r.name, keyspace)) for r in hourly[:3]}) > 1

    wakes = [holdings.semaphore(n).wake_key("host-a:1") for n in needs]
    first_slot = key_slot(wakes[0].encode())
    assert holdings.wake_keys(needs) == sorted(w for w in wakes if key_slot(w.encode()) == first_slot)

    held = holdings.take("d1", "id-1", needs, [*fast[:2], *hourly[:3]])
    assert isinstance(held, list) and len(held) == 3
    # The limit of tenant acme is full: refused, the other semaphores given back, the rates refunded.
    refused = holdings.take("d2", "id-2", needs, hourly[3:])
    assert isinstance(refused, Wait) and "tenant:acme" in str(refused.reason)
    assert all(cluster.get(names.rate_key(r.name, keyspace)) is None for r in hourly[3:])
    cap = Semaphore(cluster, needs[1].name, 2, keyspace=keyspace)
    assert len(cap.holders()) == 1  # only d1's
    # A rate refuses before any semaphore is asked.
    assert isinstance(holdings.take("d3", "id-3", needs, hourly[:1]), Wait)

    assert holdings.give_back("d1")
    again = holdings.take("d2", "id-2", needs, hourly[3:])
    assert isinstance(again, list) and [lease.task_id for _, lease in again] == ["id-2"] * 3
    assert holdings.give_back("d2")
    assert all(Semaphore(cluster, n.name, n.capacity, keyspace=keyspace).holders() == [] for n in needs)


def test_dead_letters_peers_and_fleet_on_the_cluster(cluster: Any, keyspace: str) -> None:
    dead = DeadLetterStore(cluster, keyspace)
    try:
        raise ValueError("boom")
    except ValueError as exc:
        record = DeadLetter.for_exception(
            exc, task="tasks.t", task_id="id-1", args=[1], kwargs={}, attempts=3
        )
    dead.add(record)
    assert [r.task_id for r in dead.list()] == ["id-1"] and dead.count() == 1
    assert dead.remove(record.id) and dead.count() == 0
    dead.add(record)
    assert dead.purge() == 1

    boards = [PeerBoard(cluster, keyspace, f"host-{i}:1") for i in range(3)]
    for i, board in enumerate(boards):
        board.publish({"room": i})
    assert {o: r["room"] for o, r in boards[0].read().items()} == {f"host-{i}:1": i for i in range(3)}
    boards[1].withdraw()
    assert sorted(boards[0].read()) == ["host-0:1", "host-2:1"]

    fleet = FleetStore(cluster, keyspace)
    for node in ("a@h", "b@h"):
        fleet.publish_report(node, {"node": node})
    assert sorted(fleet.reports()) == ["a@h", "b@h"]
    fleet.withdraw_report("a@h")
    assert sorted(fleet.reports()) == ["b@h"]
