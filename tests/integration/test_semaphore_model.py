"""Model-based test: random sequences of semaphore operations against a plain Python model.

Time: the scripts read Redis ``TIME``, which a test cannot move. Leases are taken with a 60 s
ttl (no example lives that long), and the ``expire`` rule makes one lease expire by setting its
expiry score in the leases sorted set to 0 (epoch), exactly the state a lease reaches when its
holder stalls past the ttl. No test hook is added to the library for it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from taskpool.core.errors import ConfigurationError
from taskpool.stores.semaphores import Lease, LeaseLost, Semaphore, SlotTimeout

pytestmark = pytest.mark.timeout(60)

OWNERS = ("w1:1", "w1:2", "w2:1")
MAX_CAPACITY = 4


@dataclass
class Held:
    lease: Lease
    expired: bool = False  # expiry forced into the past, not yet reaped by a script


class SemaphoreModel(RuleBasedStateMachine):
    """Redis semaphore vs. a dict of held leases; ``client`` is set by the test below."""

    client: redis.Redis

    def __init__(self) -> None:
        super().__init__()
        self.sem: Semaphore
        self.capacity = 0
        self.held: dict[str, Held] = {}  # token -> lease still in Redis (expired or not)
        self.seen: list[Lease] = []  # every lease ever granted, to renew or release stale ones
        self.last_fence = 0

    @initialize(capacity=st.integers(1, MAX_CAPACITY))
    def create(self, capacity: int) -> None:
        self.capacity = capacity
        self.sem = Semaphore(self.client, f"test:model:{uuid.uuid4().hex[:12]}", capacity, ttl=60.0)

    # -- the model ------------------------------------------------------------------------------

    def reap_expired(self) -> None:
        for token in [t for t, h in self.held.items() if h.expired]:
            del self.held[token]

    def expected_grant(self, count: int) -> tuple[int, ...] | None:
        taken = {slot for h in self.held.values() for slot in h.lease.slots}
        if len(taken) + count > self.capacity:
            return None
        return tuple(s for s in range(self.capacity) if s not in taken)[:count]

    def check_grant(self, lease: Lease | None, expected: tuple[int, ...] | None, owner: str) -> None:
        if expected is None:
            assert lease is None
            return
        assert lease is not None
        assert lease.slots == expected
        assert lease.owner == owner
        assert lease.fence > self.last_fence
        self.last_fence = lease.fence
        self.held[lease.token] = Held(lease)
        self.seen.append(lease)

    def pick(self, index: int) -> Lease:
        return self.seen[index % len(self.seen)]

    # -- rules ----------------------------------------------------------------------------------

    @rule(owner=st.sampled_from(OWNERS), count=st.integers(1, MAX_CAPACITY))
    def try_acquire(self, owner: str, count: int) -> None:
        if count > self.capacity:
            with pytest.raises(ConfigurationError):
                self.sem.try_acquire(owner, count)
            return
        self.reap_expired()
        expected = self.expected_grant(count)
        self.check_grant(self.sem.try_acquire(owner, count), expected, owner)

    @rule(owner=st.sampled_from(OWNERS), count=st.integers(1, 2))
    def acquire_without_waiting(self, owner: str, count: int) -> None:
        if count > self.capacity:
            return
        self.reap_expired()
        expected = self.expected_grant(count)
        try:
            lease: Lease | None = self.sem.acquire(owner, count, timeout=0.0)
        except SlotTimeout:
            lease = None
        self.check_grant(lease, expected, owner)

    @precondition(lambda self: self.seen)
    @rule(index=st.integers(0, 1000))
    def renew(self, index: int) -> None:
        lease = self.pick(index)
        state = self.held.get(lease.token)
        if state is None or state.expired:
            with pytest.raises(LeaseLost):
                self.sem.renew(lease)
            self.held.pop(lease.token, None)  # an expired lease is reaped by the failed renewal
        else:
            before = lease.expires_at
            assert self.sem.renew(lease) >= before

    @precondition(lambda self: self.seen)
    @rule(index=st.integers(0, 1000))
    def release(self, index: int) -> None:
        lease = self.pick(index)
        state = self.held.pop(lease.token, None)
        assert self.sem.release(lease) is (state is not None and not state.expired)

    @rule(owner=st.sampled_from((*OWNERS, "w1:")), prefix=st.booleans())
    def release_owner(self, owner: str, prefix: bool) -> None:
        def matches(held: Held) -> bool:
            return held.lease.owner.startswith(owner) if prefix else held.lease.owner == owner

        gone = [token for token, held in self.held.items() if matches(held)]
        expected = sum(self.held.pop(token).lease.count for token in gone)
        assert self.sem.release_owner(owner, prefix=prefix) == expected

    @precondition(lambda self: any(not h.expired for h in self.held.values()))
    @rule(index=st.integers(0, 1000))
    def expire(self, index: int) -> None:
        alive = [h for h in self.held.values() if not h.expired]
        victim = alive[index % len(alive)]
        assert self.client.zadd(self.sem.keys.leases, {victim.lease.token: 0}, xx=True, ch=True) == 1
        victim.expired = True

    @rule(capacity=st.integers(1, MAX_CAPACITY))
    def set_capacity(self, capacity: int) -> None:
        self.sem.set_capacity(capacity)  # config: nobody is evicted, new grants wait for room
        self.capacity = capacity

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def holders_match_the_model(self) -> None:
        if self.capacity == 0:
            return  # before initialize
        actual = {h.slot: (h.token, h.owner, h.fence, h.expired) for h in self.sem.holders()}
        expected = {
            slot: (token, held.lease.owner, held.lease.fence, held.expired)
            for token, held in self.held.items()
            for slot in held.lease.slots
        }
        assert actual == expected


def test_semaphore_behaves_like_its_model(redis_client: redis.Redis) -> None:
    machine = type("BoundSemaphoreModel", (SemaphoreModel,), {"client": redis_client})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=75,
            stateful_step_count=30,
            deadline=None,
            database=None,  # keep no .hypothesis/ folder in the project
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
