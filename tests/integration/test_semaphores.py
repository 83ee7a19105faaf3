"""Unit tests of taskpool.semaphores against a real redis-server (the session fixture)."""

from __future__ import annotations

import logging
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import redis

from taskpool.core.errors import ConfigurationError, TaskpoolError
from taskpool.ops.embedded import RedisServer
from taskpool.stores.semaphores import Lease, LeaseKeeper, LeaseLost, Semaphore, SlotTimeout
from taskpool.stores.semaphores.semaphore import Refusal
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(30)

SemFactory = Callable[..., Semaphore]


@pytest.fixture
def make_sem(redis_client: redis.Redis) -> SemFactory:
    """Semaphores with a fresh name each, so tests never share state."""

    def make(capacity: int = 1, ttl: float = 30.0, **kwargs: object) -> Semaphore:
        return Semaphore(redis_client, f"test:{uuid.uuid4().hex[:12]}", capacity, ttl, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def server_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


def test_uncontended_acquire_and_release(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=1)
    lease = sem.acquire("host:1", task_id="t-1")
    assert lease.semaphore == sem.name
    assert lease.slots == (0,)
    assert lease.owner == "host:1"
    assert lease.task_id == "t-1"
    assert lease.expires_at > server_now(sem.client) + 29
    assert sem.release(lease) is True
    assert sem.holders() == []
    assert sem.try_acquire("host:2") is not None


def test_capacity_is_honored(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=3)
    leases = [sem.try_acquire(f"host:{i}") for i in range(3)]
    assert all(leases)
    assert sem.try_acquire("host:9") is None
    assert sem.release(leases[1])  # type: ignore[arg-type]
    again = sem.try_acquire("host:9")
    assert again is not None
    assert again.slots == (1,)
    assert sem.try_acquire("host:10") is None


def test_count_is_all_or_nothing(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=3)
    first = sem.try_acquire("a", count=2)
    assert first is not None
    assert first.slots == (0, 1)
    before = sem.holders()
    assert sem.try_acquire("b", count=2) is None
    assert sem.holders() == before  # a refused multi-slot acquire takes nothing
    sem.release(first)
    second = sem.try_acquire("b", count=3)
    assert second is not None
    assert second.slots == (0, 1, 2)
    assert second.count == 3


def test_slots_granted_are_the_lowest_free(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=4)
    leases = [sem.try_acquire("a") for _ in range(4)]
    assert [lease.slots for lease in leases if lease] == [(0,), (1,), (2,), (3,)]
    sem.release(leases[3])  # type: ignore[arg-type]
    sem.release(leases[1])  # type: ignore[arg-type]
    pair = sem.try_acquire("b", count=2)
    assert pair is not None
    assert pair.slots == (1, 3)


def test_fence_increases_with_every_grant(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=2)
    fences = []
    for _ in range(5):
        lease = sem.acquire("a")
        fences.append(lease.fence)
        sem.release(lease)
    other = sem.acquire("b", count=2)
    fences.append(other.fence)
    assert fences == sorted(set(fences))
    assert fences[-1] - fences[0] == 5


def test_renew_extends_the_lease(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=1, ttl=0.4)
    lease = sem.acquire("a")
    first_expiry = lease.expires_at
    time.sleep(0.15)
    new_expiry = sem.renew(lease)
    assert new_expiry == lease.expires_at
    assert new_expiry > first_expiry + 0.1
    wait_for(lambda: server_now(sem.client) > first_expiry + 0.02, timeout=5, what="the first expiry to pass")
    assert sem.try_acquire("b") is None  # still held thanks to the renewal
    assert sem.renew(lease) > new_expiry


def test_expiry_frees_the_slot(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=1, ttl=0.3)
    lease = sem.acquire("a")
    assert sem.try_acquire("b") is None
    start = time.monotonic()
    taken = wait_for(lambda: sem.try_acquire("b"), timeout=5, interval=0.02, what="the lease to expire")
    assert isinstance(taken, Lease)
    assert taken.slots == lease.slots
    assert taken.fence > lease.fence
    assert 0.1 < time.monotonic() - start < 3


def test_renew_after_expiry_raises_lease_lost(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=1, ttl=0.2)
    unreaped = sem.acquire("a")
    wait_for(lambda: server_now(sem.client) > unreaped.expires_at + 0.01, timeout=5, what="expiry")
    with pytest.raises(LeaseLost, match="had expired"):
        sem.renew(unreaped)  # expired but not yet reaped: lost all the same, and reaped now
    assert sem.holders() == []

    reaped = sem.acquire("a")
    wait_for(lambda: server_now(sem.client) > reaped.expires_at + 0.01, timeout=5, what="expiry")
    successor = sem.acquire("b")  # reaps the expired lease and takes its slot
    assert successor.slots == reaped.slots
    with pytest.raises(LeaseLost, match="no longer held") as info:
        sem.renew(reaped)
    assert sem.name in str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert [h.token for h in sem.holders()] == [successor.token]


def test_release_twice_or_after_expiry_is_reported(
    make_sem: SemFactory, caplog: pytest.LogCaptureFixture
) -> None:
    sem = make_sem(capacity=1, ttl=0.2)
    lease = sem.acquire("a")
    assert sem.release(lease) is True
    with caplog.at_level(logging.WARNING, logger="taskpool.semaphores"):
        assert sem.release(lease) is False
    assert any("held no slot" in r.getMessage() for r in caplog.records)

    overrun = sem.acquire("a")
    wait_for(lambda: server_now(sem.client) > overrun.expires_at + 0.01, timeout=5, what="expiry")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="taskpool.semaphores"):
        assert sem.release(overrun) is False
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "overran" in caplog.records[0].getMessage()
    assert sem.try_acquire("b") is not None  # its slot was freed all the same


def test_release_owner_frees_every_slot_of_that_owner(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=5)
    sem.acquire("w1:10", count=2)
    sem.acquire("w1:10")
    keep = sem.acquire("w1:11")
    other = sem.acquire("w2:10")
    assert sem.release_owner("w1:10") == 3
    assert sorted(h.token for h in sem.holders()) == sorted([keep.token, other.token])
    assert sem.release_owner("w1:10") == 0
    assert sem.release_owner("w1:", prefix=True) == 1
    assert [h.owner for h in sem.holders()] == ["w2:10"]


def test_blocked_acquire_wakes_promptly_on_release(make_sem: SemFactory, pool: ThreadPoolExecutor) -> None:
    # poll_interval and ttl are long, so only the wake list can end the wait early.
    sem = make_sem(capacity=1, ttl=20.0, poll_interval=10.0)
    held = sem.acquire("a")
    started = threading.Event()

    def blocked() -> tuple[Lease, float]:
        started.set()
        lease = sem.acquire("b", timeout=5.0)
        return lease, time.monotonic()

    future: Future[tuple[Lease, float]] = pool.submit(blocked)
    started.wait(5)
    time.sleep(0.3)  # let it block in BLPOP
    assert not future.done()
    released_at = time.monotonic()
    sem.release(held)
    lease, woke_at = future.result(timeout=5)
    assert lease.slots == (0,)
    assert woke_at - released_at < 0.5, f"woke {woke_at - released_at:.3f} s after the release"


def test_release_owner_wakes_waiters(make_sem: SemFactory, pool: ThreadPoolExecutor) -> None:
    sem = make_sem(capacity=2, ttl=20.0, poll_interval=10.0)
    sem.acquire("dead:1", count=2)
    futures = [pool.submit(sem.acquire, f"b:{i}", 1, 5.0) for i in range(2)]
    time.sleep(0.3)
    assert not any(f.done() for f in futures)
    released_at = time.monotonic()
    assert sem.release_owner("dead:1") == 2
    leases = [f.result(timeout=5) for f in futures]
    assert time.monotonic() - released_at < 1.0
    assert sorted(lease.slots for lease in leases) == [(0,), (1,)]


def test_a_waiter_for_more_slots_is_not_passed_by_later_smaller_ones(
    make_sem: SemFactory, pool: ThreadPoolExecutor
) -> None:
    sem = make_sem(capacity=2, ttl=20.0, poll_interval=0.05)
    first, second = sem.acquire("a"), sem.acquire("a")
    wants_two = pool.submit(sem.acquire, "w2", 2, 10.0)
    wait_for(lambda: [w[1] for w in sem.waiters()] == [2], what="the two-slot waiter in line")
    wants_one = pool.submit(sem.acquire, "w1", 1, 10.0)
    wait_for(lambda: [w[1] for w in sem.waiters()] == [2, 1], what="the one-slot waiter behind it")
    sem.release(first)  # one slot free: it is the two-slot waiter's, which came first
    assert sem.try_acquire("newcomer") is None  # a caller out of line leaves it too
    time.sleep(0.3)  # several polls of both waiters
    assert not wants_two.done() and not wants_one.done()
    sem.release(second)
    two = wants_two.result(timeout=5)
    assert two.slots == (0, 1)
    assert not wants_one.done()
    sem.release(two)
    assert wants_one.result(timeout=5).count == 1
    assert sem.waiters() == []


def test_waiters_are_served_in_arrival_order(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=1, poll_interval=0.05)
    held = sem.acquire("a")
    order: list[str] = []
    with ThreadPoolExecutor(max_workers=6) as executor:
        futures = []
        for i in range(6):
            owner = f"host{i}:1"

            def run(owner: str = owner) -> None:
                lease = sem.acquire(owner, timeout=20)
                order.append(owner)
                time.sleep(0.02)
                sem.release(lease)

            futures.append(executor.submit(run))
            wait_for(lambda n=i + 1: len(sem.waiters()) == n, what=f"waiter {i} in line")
        sem.release(held)
        for f in futures:
            f.result(timeout=20)
    assert order == [f"host{i}:1" for i in range(6)]


def test_a_place_in_line_expires_unless_refreshed(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=2, queue_ttl=0.5)
    sem.acquire("a")
    assert sem.join("gone:1|d1", 2) > 0  # a waiter for both slots, whose worker then died
    kept = sem.join("alive:1|d2", 1)
    assert sem.try_acquire("b") is None  # the free slot is the first waiter's
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and [w[0] for w in sem.waiters()] != ["alive:1|d2"]:
        assert sem.refresh_waiters(["alive:1|d2"]) == 1
        sem.try_acquire_or_free("probe")  # any script call forgets expired places
        time.sleep(0.1)
    assert [(w, n) for w, n, _ in sem.waiters()] == [("alive:1|d2", 1)]
    assert sem.join("alive:1|d2", 1) == kept  # its place, not a new one
    lease = sem.attempt("alive:1", 1, None, "tok", waiter="alive:1|d2")
    assert not isinstance(lease, Refusal)
    assert sem.waiters() == []


def test_release_owner_forgets_the_owners_places(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=1)
    sem.acquire("a")
    sem.join("host-a:7|d1", 1)
    sem.join("host-b:7|d2", 1)
    sem.release_owner("host-a:", prefix=True)
    assert [w for w, _, _ in sem.waiters()] == ["host-b:7|d2"]
    assert sem.leave(["host-b:7|d2"]) == 1
    assert sem.waiters() == []


def test_a_refused_waiter_keeps_its_arrival_on_every_semaphore(make_sem: SemFactory) -> None:
    a, b = make_sem(capacity=1), make_sem(capacity=1)
    a.acquire("x")
    refused = a.attempt("w:1", 1, None, "t1", waiter="w:1|d", leave_on_grant=False)
    assert isinstance(refused, Refusal) and refused.arrival_ms > 0
    b.acquire("x")
    again = b.attempt("w:1", 1, None, "t2", waiter="w:1|d", arrival_ms=refused.arrival_ms)
    assert isinstance(again, Refusal) and again.arrival_ms == refused.arrival_ms
    assert [w[2] for w in a.waiters()] == [w[2] for w in b.waiters()] == [refused.arrival_ms / 1000]


def test_slot_timeout_names_semaphore_count_and_timeout(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=2)
    sem.acquire("a")
    start = time.monotonic()
    with pytest.raises(SlotTimeout) as info:
        sem.acquire("b", count=2, timeout=0.3)
    elapsed = time.monotonic() - start
    assert 0.25 < elapsed < 2.0
    message = str(info.value)
    assert repr(sem.name) in message
    assert "2 of 2 slot(s)" in message
    assert "0.3 s" in message
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, TaskpoolError)


def test_holders_shows_who_holds_what(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=3, ttl=0.3)
    before = server_now(sem.client)
    gpu = sem.acquire("host:7", count=2, task_id="task-42")
    one = sem.acquire("host:8")
    holders = sem.holders()
    assert [(h.slot, h.token, h.owner, h.task_id, h.fence) for h in holders] == [
        (0, gpu.token, "host:7", "task-42", gpu.fence),
        (1, gpu.token, "host:7", "task-42", gpu.fence),
        (2, one.token, "host:8", None, one.fence),
    ]
    for h in holders:
        assert before - 0.01 <= h.since <= h.expires_at
        assert not h.expired
    assert holders[0].expires_at == gpu.expires_at
    sem.renew(one)
    wait_for(lambda: server_now(sem.client) > gpu.expires_at + 0.01, timeout=5, what="expiry")
    expired = {h.slot: h.expired for h in sem.holders()}
    assert expired[0] and expired[1]  # listed until a script reaps them


def test_smaller_capacity_evicts_no_one_and_blocks_new_grants(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=3)
    leases = [sem.acquire(f"a:{i}") for i in range(3)]
    sem.set_capacity(1)
    assert len(sem.holders()) == 3
    sem.release(leases[0])
    sem.release(leases[2])
    assert sem.try_acquire("b") is None  # one holder is already at the new capacity
    sem.release(leases[1])
    lease = sem.try_acquire("b")
    assert lease is not None
    assert lease.slots == (0,)
    sem.set_capacity(2)
    assert sem.try_acquire("c") is not None


def test_retrying_an_acquire_with_its_token_is_idempotent(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=2)
    first = sem.attempt("a", 1, None, "fixed-token")  # what a retry after a lost reply sends
    again = sem.attempt("a", 1, None, "fixed-token")
    assert isinstance(first, Lease)
    assert isinstance(again, Lease)
    assert (again.slots, again.fence) == (first.slots, first.fence)
    assert len(sem.holders()) == 1


def test_wake_ups_go_only_to_waiters_whose_slots_are_free(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=2)
    for _ in range(50):
        sem.release(sem.acquire("a"))
    wakes = sem.client.keys(sem.wake_key("*"))
    assert wakes == []  # nobody waited, nobody is woken
    one, two = sem.acquire("a"), sem.acquire("a")
    sem.join("w1|d", 1)
    sem.join("w2|d", 2)
    sem.join("w3|d", 1)  # behind w2, which wants both slots
    sem.release(one)
    assert sem.client.llen(sem.wake_key("w1")) == 1
    assert sem.client.exists(sem.wake_key("w2"), sem.wake_key("w3")) == 0
    assert 0 < sem.client.pttl(sem.wake_key("w1")) <= 60_000
    sem.leave(["w1|d"])  # w1 went elsewhere: w2 is first, but one slot is not enough for it
    assert sem.client.exists(sem.wake_key("w2"), sem.wake_key("w3")) == 0
    sem.release(two)
    assert sem.client.llen(sem.wake_key("w2")) == 1  # one element at most, however often woken
    sem.reap_expired()
    assert sem.client.llen(sem.wake_key("w2")) == 1
    assert sem.client.exists(sem.wake_key("w3")) == 0


def test_invalid_arguments_fail_with_the_value(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=2)
    with pytest.raises(ConfigurationError, match="count=3 exceeds capacity=2"):
        sem.acquire("a", count=3)
    with pytest.raises(ConfigurationError, match="count must be an int >= 1, got 0"):
        sem.try_acquire("a", count=0)
    with pytest.raises(ConfigurationError, match="non-empty owner"):
        sem.try_acquire("")
    with pytest.raises(ConfigurationError, match="without braces"):
        Semaphore(sem.client, "a{b}", 1)
    with pytest.raises(ConfigurationError, match="capacity must be an int >= 1, got 0"):
        Semaphore(sem.client, "ok", 0)
    other = make_sem(capacity=1)
    with pytest.raises(ValueError, match="given to semaphore"):
        sem.release(other.acquire("a"))


def test_works_with_decode_responses(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    try:
        sem = Semaphore(client, f"test:{uuid.uuid4().hex[:12]}", 2)
        lease = sem.acquire("a", task_id="t")
        assert [(h.slot, h.token, h.task_id) for h in sem.holders()] == [(0, lease.token, "t")]
        sem.renew(lease)
        assert sem.release(lease)
    finally:
        client.close()


def test_errors_round_trip_through_pickle_and_args() -> None:
    for exc in (SlotTimeout("semaphore 'x': 1 of 1 slot(s)"), LeaseLost("semaphore 'x': lost")):
        rebuilt = type(exc)(*exc.args)
        assert (type(rebuilt), rebuilt.args, str(rebuilt)) == (type(exc), exc.args, str(exc))
        unpickled = pickle.loads(pickle.dumps(exc))
        assert (type(unpickled), unpickled.args) == (type(exc), exc.args)


def test_lease_keeper_renews_until_removed(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=1, ttl=0.3)
    lease = sem.acquire("a")
    with LeaseKeeper() as keeper:
        keeper.add(sem, lease)
        deadline = time.monotonic() + 1.2  # four ttls
        while time.monotonic() < deadline:
            assert sem.try_acquire("b") is None
            time.sleep(0.05)
        keeper.remove(lease)
        assert sem.release(lease) is True
    assert keeper.leases() == []


def test_lease_keeper_reports_a_lost_lease(make_sem: SemFactory, caplog: pytest.LogCaptureFixture) -> None:
    sem = make_sem(capacity=1, ttl=0.6)
    lease = sem.acquire("a")
    lost: list[tuple[Lease, LeaseLost]] = []
    with (
        caplog.at_level(logging.ERROR, logger="taskpool.semaphores"),
        LeaseKeeper(on_lost=lambda lease, exc: lost.append((lease, exc))) as keeper,
    ):
        keeper.add(sem, lease)
        sem.client.zadd(sem.keys.leases, {lease.token: 0}, xx=True)  # as if the process had stalled
        wait_for(lambda: lost, timeout=5, interval=0.02, what="the keeper to report the loss")
        assert keeper.leases() == []
    assert lost[0][0] is lease
    assert isinstance(lost[0][1], LeaseLost)
    assert any(lease.token in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_lease_keeper_grace_for_leases_released_by_another_process(make_sem: SemFactory) -> None:
    """A pool process releases by token; the keeper waits ``grace`` before calling the lease lost."""
    sem = make_sem(capacity=2, ttl=0.3)
    released, stolen = sem.acquire("a"), sem.acquire("a")
    lost: list[Lease] = []
    with LeaseKeeper(on_lost=lambda lease, exc: lost.append(lease), grace=0.5) as keeper:
        keeper.add(sem, released)
        keeper.add(sem, stolen)
        assert sem.release_token(released.token) == 1  # "the pool process" frees it
        sem.client.zadd(sem.keys.leases, {stolen.token: 0}, xx=True)  # this one is really lost
        time.sleep(0.2)  # a renewal (every 0.1 s) has found both gone
        keeper.remove(released)  # "the main process" hears of the end within the grace period
        wait_for(lambda: lost, timeout=5, interval=0.02, what="the keeper to report the loss")
        time.sleep(0.3)
    assert lost == [stolen]
    with_missing_ok = sem.release(released, missing_ok=True)
    assert with_missing_ok is False  # already free, and no warning asked for


def test_a_long_line_keeps_its_order_and_wakes_only_its_front(make_sem: SemFactory) -> None:
    sem = make_sem(capacity=3)
    held = [sem.acquire("a") for _ in range(3)]
    for i in range(40):
        sem.join(f"w{i:02d}|d", 1)
    assert sem.try_acquire_or_free("newcomer") == 0  # all 3 slots are the line's
    for lease in held:
        sem.release(lease)
    woken = sorted(k.decode().rsplit(":", 1)[1] for k in sem.client.keys(sem.wake_key("*")))
    assert woken == ["w00", "w01", "w02"]
    assert sem.try_acquire("newcomer") is None
    second = sem.attempt("w01", 1, None, "t1", waiter="w01|d")  # second in line, its slot is free
    assert not isinstance(second, Refusal)
    assert isinstance(sem.attempt("w03", 1, None, "t3", waiter="w03|d"), Refusal)  # w00, w02 first
    assert [w for w, _, _ in sem.waiters()][:3] == ["w00|d", "w02|d", "w03|d"]
