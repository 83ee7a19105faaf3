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
from collections.abc import Callable
from typing import Any

import redis

from taskpool.core.limits import Need, expand_limit_name, gpu_count, needs_of
from taskpool.core.options import TaskOptions
from taskpool.stores.limits import LimitStore
from taskpool.stores.semaphores import Lease, LeaseKeeper, LeaseLost, Semaphore

logger = logging.getLogger("taskpool.admission")

#: Seconds a limit's size is cached by a worker (``taskpool limits set`` takes effect after it).
LIMIT_SIZE_TTL = 2.0

Held = list[tuple[Semaphore, Lease]]


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
        self._sizes_at = 0.0
        self._semaphores: dict[str, Semaphore] = {}
        self._held: dict[str, Held] = {}  # admission key -> leases
        self._lock = threading.Lock()

    def start(self) -> None:
        self.keeper.start()

    def stop(self) -> None:
        self.keeper.stop()

    def needs(self, options: TaskOptions) -> list[Need]:
        """The semaphores a task needs here (raises ``ConfigurationError`` if it can never run)."""
        if self._gpus is None and options.gpu_slots:
            self._gpus = gpu_count()
        names = list(options.limits)
        if names and (
            time.monotonic() - self._sizes_at > LIMIT_SIZE_TTL or not set(names) <= set(self._sizes)
        ):
            self._sizes.update(self.limits.get_many([expand_limit_name(n) for n in names]))
            self._sizes_at = time.monotonic()
        return needs_of(options, node=self.node, limit_sizes=self._sizes, gpus=self._gpus or 0)

    def semaphore(self, need: Need) -> Semaphore:
        sem = self._semaphores.get(need.name)
        if sem is None:
            sem = self._semaphores[need.name] = Semaphore(
                self.client, need.name, need.capacity, self.ttl, keyspace=self.keyspace
            )
        elif sem.capacity != need.capacity:
            sem.set_capacity(need.capacity)
        return sem

    def take(self, key: str, task_id: str, needs: list[Need]) -> Held | None:
        """Take every need for the delivery ``key``, or none (partial grants are given back)."""
        got: Held = []
        for need in needs:
            sem = self.semaphore(need)
            lease = sem.try_acquire(self.owner, need.count, task_id=task_id)
            if lease is None:
                for s, lease_ in got:
                    s.release(lease_)
                return None
            got.append((sem, lease))
        for sem, lease in got:
            self.keeper.add(sem, lease)
        with self._lock:
            self._held[key] = got
        return got

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
        """The wake lists a release of any of ``needs`` pushes to (for one BLPOP)."""
        return sorted({self.semaphore(n).keys.wake for n in needs})


def granted(needs: list[Need], held: Held) -> tuple[list[list[Any]], list[int]]:
    """What travels to the pool process: ``[[semaphore, capacity, token], ...]`` and the GPU slots."""
    leases = [[sem.name, sem.capacity, lease.token] for sem, lease in held]
    pairs = zip(needs, held, strict=True)
    gpus = [slot for need, (_, lease) in pairs if need.kind == "gpu" for slot in lease.slots]
    return leases, gpus
