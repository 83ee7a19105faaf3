"""Holdings (the Redis side of the admission gate) on a real redis-server: places in line.

Two Holdings objects stand for two workers sharing one Redis; a request's needs are taken all
or none, and a refused request keeps one arrival time in every semaphore it waits for.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from taskpool.core.limits import Need
from taskpool.core.names import LIMIT
from taskpool.stores.semaphores import Semaphore
from taskpool.worker.holdings import Holdings
from taskpool.worker.waits import Wait

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=["redis", "cluster"])
def client(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A standalone Redis, and a Redis Cluster of three masters (the lines live on several nodes)."""
    if request.param == "redis":
        yield request.getfixturevalue("redis_client")
        return
    cluster = request.getfixturevalue("redis_cluster").client()
    yield cluster
    cluster.close()


@pytest.fixture
def workers(client: Any) -> Iterator[tuple[Holdings, Holdings, str]]:
    keyspace = f"hold{uuid.uuid4().hex[:8]}"
    a = Holdings(client, keyspace, 30.0, node="w1@h", owner="w1@h:1")
    b = Holdings(client, keyspace, 30.0, node="w2@h", owner="w2@h:2")
    yield a, b, keyspace
    for h in (a, b):
        for key in h.delivery_keys():
            h.give_back(key)


def need(name: str, capacity: int, count: int = 1) -> Need:
    return Need(f"limit:{name}", capacity, count, LIMIT)


def line(client: Any, keyspace: str, n: Need) -> list[tuple[str, int]]:
    return [(w, c) for w, c, _ in Semaphore(client, n.name, n.capacity, keyspace=keyspace).waiters()]


def test_a_refused_request_keeps_the_slots_it_wants_from_later_ones_on_other_workers(
    workers: tuple[Holdings, Holdings, str], client: Any
) -> None:
    w1, w2, keyspace = workers
    shared = need("shared", 2)
    assert not isinstance(w1.take("a#1", "a", [shared]), Wait)
    wide = need("shared", 2, count=2)
    refused = w2.take("b#1", "b", [wide])
    assert isinstance(refused, Wait) and refused.reason == "limit shared 1/2"
    assert line(client, keyspace, shared) == [("w2@h:2|b#1", 2)]
    later = w1.take("a#2", "a2", [shared])  # one slot is free, but the earlier waiter wants it
    assert isinstance(later, Wait) and later.reason == "limit shared 2/2"
    w1.give_back("a#1")
    assert not isinstance(w2.take("b#1", "b", [wide]), Wait)
    assert line(client, keyspace, shared) == [("w1@h:1|a#2", 1)]  # admitted: out of line
    w1.leave("a#2")  # a request handed to another worker gives up its place
    assert line(client, keyspace, shared) == []


def test_two_requests_needing_the_same_semaphores_never_hold_each_other_up(
    workers: tuple[Holdings, Holdings, str], client: Any
) -> None:
    w1, w2, keyspace = workers
    a, b = need("a", 1), need("b", 1)
    assert not isinstance(w1.take("hold-a#1", "h1", [a]), Wait)
    assert not isinstance(w1.take("hold-b#1", "h2", [b]), Wait)
    assert isinstance(w1.take("x#1", "x", [a, b]), Wait)  # first: in line at a
    assert isinstance(w2.take("y#1", "y", [a, b]), Wait)  # second: behind it at a
    w1.give_back("hold-a#1")
    assert isinstance(w1.take("x#1", "x", [a, b]), Wait)  # gets a, not b: keeps its place at a
    assert [w for w, _ in line(client, keyspace, a)] == ["w1@h:1|x#1", "w2@h:2|y#1"]
    assert [w for w, _ in line(client, keyspace, b)] == ["w1@h:1|x#1"]
    assert isinstance(w2.take("y#1", "y", [a, b]), Wait)  # a is x's, though free
    w1.give_back("hold-b#1")
    assert isinstance(w2.take("y#1", "y", [a, b]), Wait)  # b too: x came first
    assert not isinstance(w1.take("x#1", "x", [a, b]), Wait)
    w1.give_back("x#1")
    assert not isinstance(w2.take("y#1", "y", [a, b]), Wait)
    assert line(client, keyspace, a) == line(client, keyspace, b) == []


def test_places_of_waiting_requests_outlive_the_queue_ttl_while_refreshed(
    workers: tuple[Holdings, Holdings, str], client: Any
) -> None:
    w1, w2, keyspace = workers
    shared = need("ttl", 1)
    assert not isinstance(w1.take("a#1", "a", [shared]), Wait)
    w2.join("b#1", [shared])
    sem = w2.semaphore(shared)
    sem.queue_ttl = 0.3
    w2.join("b#1", [shared])  # shorter place from now on
    for _ in range(8):
        w2._next_refresh = 0.0
        w2.refresh_queued()
        time.sleep(0.1)
    probe = w1.semaphore(shared)
    probe.try_acquire_or_free("probe")  # a script run forgets lapsed places
    assert [w for w, _ in line(client, keyspace, shared)] == ["w2@h:2|b#1"]
    time.sleep(0.5)  # its worker stopped refreshing (died): the place lapses
    probe.try_acquire_or_free("probe")
    assert line(client, keyspace, shared) == []


def test_an_abandoned_request_gives_up_its_places_off_the_event_loop(
    workers: tuple[Holdings, Holdings, str], client: Any
) -> None:
    w1, w2, keyspace = workers
    shared = need("abandon", 1)
    assert not isinstance(w1.take("a#1", "a", [shared]), Wait)
    assert isinstance(w2.take("b#1", "b", [shared]), Wait)
    w2.abandon("b#1")  # a connection loss dropped it: no Redis call yet
    assert line(client, keyspace, shared) == [("w2@h:2|b#1", 1)]
    w2.flush_abandoned()  # the waiter thread's next turn
    assert line(client, keyspace, shared) == []
