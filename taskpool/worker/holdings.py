"""The slots one worker holds: every need of a request or none, renewed, given back per delivery.

The Redis side of the admission gate (:mod:`taskpool.worker.gate`), with no Celery in it: which
semaphores a task needs on this worker (limit sizes cached for :data:`LIMIT_SIZE_TTL`), taking
them all at once or none (no hold-and-wait), keeping the leases renewed, and giving back the
leases of one delivery (its admission key, :func:`taskpool.worker.state.admission_key`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from taskpool.core.limits import Need, gpu_count, limit_names, needs_of
from taskpool.core.options import TaskOptions
from taskpool.core.rates import RateNeed
from taskpool.stores.limits import LimitStore
from taskpool.stores.rates import RateRefusal, Rates
from taskpool.stores.semaphores import Lease, LeaseKeeper, LeaseLost, Semaphore
from taskpool.stores.semaphores.semaphore import QUEUE_TTL
from taskpool.worker.waits import Wait, rate_wait, semaphore_wait

logger = logging.getLogger("taskpool.admission")

#: Seconds a limit's size is cached by a worker (``taskpool limits set`` takes effect after it).
LIMIT_SIZE_TTL = 2.0
#: Semaphore objects a worker keeps for reuse (keyed limits make one per key).
MAX_CACHED_SEMAPHORES = 10_000

Held = list[tuple[Semaphore, Lease]]


@dataclass
class Queued:
    """Where a waiting delivery has its places in line: one arrival time (Redis ms) for all of
    its semaphores, so the oldest request is first everywhere it waits."""

    arrival_ms: int
    semaphores: dict[str, Semaphore] = field(default_factory=dict)


class Holdings:
    """The leases of one worker process, per admission key.

    Args:
        client: Redis client (shared, thread-safe pool).
        keyspace: the app's keyspace.
        ttl: lease length, seconds; renewed every ttl/3 once :meth:`start` ran.
        node: the worker's name (per-node semaphores, ``max_in_flight``).
        owner: the holder recorded with each lease (``host:pid``).
        on_lost: called with a lease whose renewal found it gone.
    """

    def __init__(
        self,
        client: redis.Redis,
        keyspace: str,
        ttl: float,
        *,
        node: str,
        owner: str,
        on_lost: Callable[[Lease, LeaseLost], None] | None = None,
    ) -> None:
        self.client = client
        self.keyspace = keyspace
        self.ttl = ttl
        self.node = node
        self.owner = owner
        self.limits = LimitStore(client, keyspace)
        # Pool processes free a lease when the task function returns (release_in_pool), before
        # this process hears of it: a renewal that finds it gone then is no loss.
        self.keeper = LeaseKeeper(on_lost=on_lost, grace=min(5.0, ttl / 3))
        self._gpus: int | None = None
        self._sizes: dict[str, int | None] = {}
        self._sizes_at: dict[str, float] = {}  # limit name -> when its size was read
        self.rates = Rates(client, keyspace)
        self.rate_times: dict[str, float] = {}  # admission key -> when its rate tokens were granted
        self._semaphores: dict[str, Semaphore] = {}
        self._held: dict[str, Held] = {}  # admission key -> leases
        self._queued: dict[str, Queued] = {}  # admission key -> its places in line (it waits)
        self._abandoned: list[tuple[str, Queued]] = []  # places to give up off the event loop
        self._next_refresh = 0.0
        self._lock = threading.Lock()

    def start(self) -> None:
        self.keeper.start()

    def stop(self) -> None:
        self.keeper.stop()

    def needs(self, options: TaskOptions, arguments: dict[str, Any] | None = None) -> list[Need]:
        """The semaphores a call of a task needs here (``arguments`` fill keyed names).

        Raises:
            ConfigurationError: the task can never run (a limit with no size, too many GPU
                slots, a keyed name whose parameter is missing).
        """
        if self._gpus is None and options.gpu_slots:
            self._gpus = gpu_count()
        if options.limits:
            now = time.monotonic()
            names = list(limit_names(options, arguments).values())
            stale = [n for n in names if now - self._sizes_at.get(n, -LIMIT_SIZE_TTL) >= LIMIT_SIZE_TTL]
            if stale:
                if len(self._sizes_at) > 10_000:  # many keys: forget the sizes not read lately
                    old = [n for n, at in self._sizes_at.items() if now - at > LIMIT_SIZE_TTL]
                    for n in old:
                        self._sizes.pop(n, None)
                        self._sizes_at.pop(n, None)
                self._sizes.update(self.limits.get_many(stale))
                self._sizes_at.update(dict.fromkeys(stale, now))
        return needs_of(
            options, node=self.node, limit_sizes=self._sizes, gpus=self._gpus or 0, arguments=arguments
        )

    def semaphore(self, need: Need) -> Semaphore:
        sem = self._semaphores.get(need.name)
        if sem is None and len(self._semaphores) >= MAX_CACHED_SEMAPHORES:
            # Keyed limits make one semaphore per key: forget them all (held leases keep theirs).
            self._semaphores.clear()
        if sem is None:
            sem = self._semaphores[need.name] = Semaphore(
                self.client, need.name, need.capacity, self.ttl, keyspace=self.keyspace
            )
        elif sem.capacity != need.capacity:
            sem.set_capacity(need.capacity)
        return sem

    def waiter(self, key: str) -> str:
        """The name of delivery ``key`` in the semaphores' queues (``owner|key``)."""
        return f"{self.owner}|{key}"

    def take(
        self, key: str, task_id: str, needs: list[Need], rates: list[RateNeed] | None = None
    ) -> Held | Wait:
        """Take every need and a token of every rate for the delivery ``key``, or none (partial
        grants are given back, rate tokens refunded); a refusal says what the request waits for.

        A semaphore that refuses the delivery queues it (its arrival is kept for every later try
        and every semaphore), so the slots it wants are left to it; once it holds them all it
        leaves every queue it was in.
        """
        rates = rates or []
        refused = self.rates.take(rates)
        if isinstance(refused, RateRefusal):
            return rate_wait(refused.blocking.name, refused.wait)
        with self._lock:
            queued = self._queued.get(key)
        waiter = self.waiter(key)
        got: Held = []
        for need in needs:
            sem = self.semaphore(need)
            result = sem.attempt(
                self.owner,
                need.count,
                task_id,
                uuid.uuid4().hex,
                waiter=waiter,
                arrival_ms=queued.arrival_ms if queued else 0,
                leave_on_grant=False,
            )
            if not isinstance(result, Lease):
                for s, lease_ in got:
                    s.release(lease_)
                self.rates.refund(rates)
                with self._lock:
                    queued = self._queued.setdefault(key, Queued(result.arrival_ms))
                    queued.semaphores[sem.name] = sem
                return semaphore_wait(need, result.free)
            got.append((sem, result))
        for sem, lease in got:
            self.keeper.add(sem, lease)
        with self._lock:
            self._held[key] = got
        if isinstance(refused, float):
            self.rate_times[key] = refused
        if queued is not None:
            self.leave(key)
        return got

    def join(self, key: str, needs: list[Need]) -> None:
        """Queue the delivery ``key`` at every semaphore of ``needs`` without trying them (it
        waits behind an earlier request of this worker for the same slots)."""
        with self._lock:
            queued = self._queued.get(key)
        waiter = self.waiter(key)
        for need in needs:
            sem = self.semaphore(need)
            arrival = sem.join(waiter, need.count, queued.arrival_ms if queued else 0)
            with self._lock:
                queued = self._queued.setdefault(key, Queued(arrival))
                queued.semaphores[sem.name] = sem

    def leave(self, key: str) -> None:
        """The delivery ``key`` no longer waits (admitted, handed back, dropped): it leaves the
        queues it was in. A place Redis could not forget now expires after :data:`QUEUE_TTL`."""
        with self._lock:
            queued = self._queued.pop(key, None)
        if queued is not None:
            _leave_lines(self.waiter(key), queued)

    def abandon(self, key: str) -> None:
        """Like :meth:`leave`, without a Redis call now (at a connection loss, where Redis may
        not answer): :meth:`flush_abandoned`, on the waiter thread, gives the places up."""
        with self._lock:
            queued = self._queued.pop(key, None)
            if queued is not None:
                self._abandoned.append((self.waiter(key), queued))

    def flush_abandoned(self) -> None:
        """Give up the places of abandoned deliveries (those Redis cannot forget now lapse)."""
        with self._lock:
            abandoned, self._abandoned = self._abandoned, []
        for waiter, queued in abandoned:
            _leave_lines(waiter, queued)

    def refresh_queued(self) -> None:
        """Keep the places of the waiting deliveries (every third of :data:`QUEUE_TTL`)."""
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + QUEUE_TTL / 3
        with self._lock:
            queued = list(self._queued.items())
        per_semaphore: dict[str, tuple[Semaphore, list[str]]] = {}
        for key, q in queued:
            for name, sem in q.semaphores.items():
                per_semaphore.setdefault(name, (sem, []))[1].append(self.waiter(key))
        for sem, waiters in per_semaphore.values():
            sem.refresh_waiters(waiters)

    def give_back(self, key: str) -> bool:
        """Release the leases of ``key``; ``False`` if it held none (already given back)."""
        with self._lock:
            held = self._held.pop(key, None)
        if not held:
            return False
        for sem, lease in held:
            self.keeper.remove(lease)
            try:
                sem.release(lease, missing_ok=True)  # the pool process may have released it first
            except redis.RedisError:
                logger.exception("taskpool: could not release %s; it frees itself at lease expiry", sem.name)
        return True

    def delivery_keys(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def held(self) -> dict[str, Held]:
        """Admission key -> its leases (a copy)."""
        with self._lock:
            return dict(self._held)

    def wake_keys(self, needs: list[Need]) -> list[str]:
        """This worker's wake lists of the semaphores of ``needs`` (for one BLPOP; a script pushes
        to one when a request of this worker is next in line and its slots are free), ``needs``
        in waiting order. On Redis Cluster a BLPOP takes keys of one slot only: those of the slot
        of the first need's list (the oldest waiter's); releases of the others are seen by the
        waiter's timeout polling (:meth:`Gate._wait_loop <taskpool.worker.gate.Gate._wait_loop>`)."""
        return wake_keys_for(self.client, [self.semaphore(n).wake_key(self.owner) for n in needs])


def _leave_lines(waiter: str, queued: Queued) -> None:
    """``waiter`` gives up its places; one Redis could not forget lapses after :data:`QUEUE_TTL`."""
    for sem in queued.semaphores.values():
        try:
            sem.leave([waiter])
        except redis.RedisError:
            logger.warning("taskpool: could not leave the line of %s; the place lapses", sem.name)


def wake_keys_for(client: Any, keys: list[str]) -> list[str]:
    """``keys`` (wake lists, first the most urgent) that one BLPOP of ``client`` may wait on:
    all of them, sorted and unique, or on a :class:`~redis.cluster.RedisCluster` only those in
    the hash slot of the first."""
    if keys and isinstance(client, RedisCluster):
        slot = key_slot(keys[0].encode())
        keys = [k for k in keys if key_slot(k.encode()) == slot]
    return sorted(set(keys))


def granted(needs: list[Need], held: Held) -> tuple[list[list[Any]], list[int]]:
    """What travels to the pool process: ``[[semaphore, capacity, token], ...]`` and the GPU slots."""
    leases = [[sem.name, sem.capacity, lease.token] for sem, lease in held]
    pairs = zip(needs, held, strict=True)
    gpus = [slot for need, (_, lease) in pairs if need.kind == "gpu" for slot in lease.slots]
    return leases, gpus
