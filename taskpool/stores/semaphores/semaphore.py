"""Lease-based counting semaphores in Redis: acquire, renew, release, release by owner.

A semaphore is a name and a capacity of N slots. A grant is a :class:`Lease` on one or more
slot indices (slot identity: a GPU index, say) that lasts ``ttl`` seconds unless renewed. All
state lives in Redis under one hash tag and changes only inside the Lua scripts next to this
file; time is Redis ``TIME``, never the client's clock. Imports redis and the stdlib only.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
from redis.cluster import RedisCluster

from taskpool.core.errors import ConfigurationError, LeaseLost, SlotTimeout
from taskpool.core.names import SEMAPHORE_PARTS, semaphore_key, semaphore_key_glob, semaphore_of_key

log = logging.getLogger(__name__)


def _script(name: str) -> str:
    folder = resources.files("taskpool.stores.semaphores")
    return folder.joinpath("common.lua").read_text() + "\n" + folder.joinpath(name).read_text()


ACQUIRE_LUA = _script("acquire.lua")
RENEW_LUA = _script("renew.lua")
RELEASE_LUA = _script("release.lua")
RELEASE_OWNER_LUA = _script("release_owner.lua")
REAP_LUA = _script("reap.lua")
QUEUE_LUA = _script("queue.lua")
#: Seconds a waiter keeps its place in a semaphore's queue unless its worker refreshes it (a
#: worker that died stops holding up the waiters behind its own after this long).
QUEUE_TTL = 10.0
#: The capacity a reader that does not know it passes to reap.lua (it wakes the first 1000 in line).
UNKNOWN_CAPACITY = 2**31 - 1


def default_owner() -> str:
    """``"host:pid"`` of this process: the owner string that :meth:`Semaphore.release_owner` matches."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class SemaphoreKeys:
    """The Redis keys of one semaphore (named by :func:`taskpool.core.names.semaphore_key`), in
    the order the Lua scripts take them as KEYS; all share the hash tag ``{name}``."""

    holders: str
    leases: str
    info: str
    fence: str
    wake: str
    queue: str
    wants: str
    due: str

    @classmethod
    def for_name(cls, name: str, keyspace: str = "taskpool") -> SemaphoreKeys:
        return cls(*(semaphore_key(name, part, keyspace) for part in SEMAPHORE_PARTS))

    def as_list(self) -> list[str]:
        """In the order the scripts expect them as KEYS."""
        return [self.holders, self.leases, self.info, self.fence, self.wake, self.queue, self.wants, self.due]


def semaphore_names(client: redis.Redis, keyspace: str = "taskpool", pattern: str = "*") -> list[str]:
    """Names of the semaphores that have (or had) holders, matching the glob ``pattern``."""
    found = set()
    for key in client.scan_iter(match=semaphore_key_glob(keyspace, pattern), count=500):
        name = semaphore_of_key(_text(key), keyspace)
        if name is not None:
            found.add(name)
    return sorted(found)


def reap_expired(client: redis.Redis, name: str, keyspace: str = "taskpool") -> list[HolderInfo]:
    """:meth:`Semaphore.reap_expired` of the semaphore ``name``, without knowing its capacity."""
    return Semaphore(client, name, 1, keyspace=keyspace).reap_expired(UNKNOWN_CAPACITY)


def holders_of(client: redis.Redis, name: str, keyspace: str = "taskpool") -> list[HolderInfo]:
    """:meth:`Semaphore.holders` of the semaphore ``name``, without knowing its capacity."""
    # Listing needs no capacity; 1 satisfies the constructor and is never sent to Redis.
    return Semaphore(client, name, 1, keyspace=keyspace).holders()


def waiters_of(client: redis.Redis, name: str, keyspace: str = "taskpool") -> list[tuple[str, int, float]]:
    """:meth:`Semaphore.waiters` of the semaphore ``name``, without knowing its capacity."""
    return Semaphore(client, name, 1, keyspace=keyspace).waiters()


@dataclass(slots=True)
class Lease:
    """A grant of ``len(slots)`` slots. ``expires_at`` is Redis server time (epoch seconds).

    :meth:`Semaphore.renew` updates ``expires_at`` in place; everything else is fixed.
    """

    semaphore: str
    token: str
    owner: str
    slots: tuple[int, ...]
    fence: int
    expires_at: float
    task_id: str | None = None

    @property
    def count(self) -> int:
        return len(self.slots)


@dataclass(frozen=True, slots=True)
class HolderInfo:
    """One held slot, as ``taskpool slots`` shows it. Times are Redis server epoch seconds."""

    slot: int
    token: str
    owner: str
    task_id: str | None
    since: float
    expires_at: float
    fence: int
    expired: bool  # past its expiry but not yet reaped: the next acquire frees it


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why :meth:`Semaphore.attempt` granted nothing."""

    retry_after: float | None  # seconds until the nearest lease expires; None when none is held
    free: int  # slots free to this caller: free now, less those wanted by waiters queued before it
    arrival_ms: int  # the caller's place in the queue (Redis ms); 0 when it has none


def _holder(slot: Any, token: str, info: dict[str, Any], expires_at: float, *, expired: bool) -> HolderInfo:
    """One held slot, from its lease's info record (the JSON the acquire script stores)."""
    return HolderInfo(
        slot=int(slot),
        token=token,
        owner=str(info.get("owner", "")),
        task_id=info.get("task_id") or None,
        since=float(info.get("since_ms", 0)) / 1000.0,
        expires_at=expires_at,
        fence=int(info.get("fence", 0)),
        expired=expired,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Semaphore:
    """A counting semaphore of ``capacity`` slots in Redis, granted as expiring leases.

    Args:
        client: the Redis connection (pool) to use; it is not closed by the semaphore.
        name: the semaphore's name, e.g. ``"license:matlab"`` or ``"gpu:host1"``; no braces.
        capacity: number of slots. It is configuration, not state: pass the current value. A
            smaller capacity evicts no holder; it refuses new grants until holders drop below it.
        ttl: lease length in seconds; holders renew every ``ttl / 3`` (see :class:`LeaseKeeper`).
        keyspace: first part of every key.
        poll_interval: longest a blocked :meth:`acquire` sleeps without a wake-up before it
            tries again: a safety net, since releases wake waiters through their wake lists. A
            wait is also capped at half the client's ``socket_timeout``.
        queue_ttl: seconds a refused waiter keeps its place in line unless it tries again or
            is refreshed (:meth:`refresh_waiters`); a waiter that vanished holds up no one longer.
    """

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        capacity: int,
        ttl: float = 30.0,
        *,
        keyspace: str = "taskpool",
        poll_interval: float = 1.0,
        queue_ttl: float = QUEUE_TTL,
    ) -> None:
        if not name or "{" in name or "}" in name:
            raise ConfigurationError(f"semaphore name must be non-empty and without braces, got {name!r}")
        if not ttl >= 0.01:
            raise ConfigurationError(f"semaphore {name!r}: ttl must be at least 0.01 s, got {ttl!r}")
        if not poll_interval > 0:
            raise ConfigurationError(
                f"semaphore {name!r}: poll_interval must be > 0 s, got {poll_interval!r}"
            )
        self.client = client
        self.name = name
        self.ttl = float(ttl)
        self.poll_interval = float(poll_interval)
        self.queue_ttl = float(queue_ttl)
        self.keys = SemaphoreKeys.for_name(name, keyspace)
        self._capacity = self._checked_capacity(capacity)
        # A BLPOP outliving the socket timeout (redis-py 8 defaults to 5 s) fails, and redis-py's
        # retry would then start it over and over: block for at most half of it.
        socket_timeout = client.get_connection_kwargs().get("socket_timeout")  # a RedisCluster has no pool
        self._max_block = socket_timeout / 2 if socket_timeout else float("inf")
        self._acquire_script = client.register_script(ACQUIRE_LUA)
        self._renew_script = client.register_script(RENEW_LUA)
        self._release_script = client.register_script(RELEASE_LUA)
        self._release_owner_script = client.register_script(RELEASE_OWNER_LUA)
        self._queue_script = client.register_script(QUEUE_LUA)

    def __repr__(self) -> str:
        return f"Semaphore({self.name!r}, capacity={self._capacity}, ttl={self.ttl:g})"

    @property
    def capacity(self) -> int:
        return self._capacity

    def set_capacity(self, capacity: int) -> None:
        """Use a new capacity from now on (current holders keep their slots)."""
        self._capacity = self._checked_capacity(capacity)

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self.ttl * 1000))

    def try_acquire(self, owner: str, count: int = 1, task_id: str | None = None) -> Lease | None:
        """Take ``count`` slots at once if they are free now (one round trip), else ``None``."""
        result = self.try_acquire_or_free(owner, count, task_id)
        return result if isinstance(result, Lease) else None

    def try_acquire_or_free(self, owner: str, count: int = 1, task_id: str | None = None) -> Lease | int:
        """Like :meth:`try_acquire`, but a refusal returns how many slots are free (wait reasons)."""
        self._check_count(count)
        result = self.attempt(owner, count, task_id, uuid.uuid4().hex)
        return result if isinstance(result, Lease) else result.free

    def acquire(
        self, owner: str, count: int = 1, timeout: float | None = None, task_id: str | None = None
    ) -> Lease:
        """Take ``count`` slots at once, blocking until they are free, in arrival order.

        A refused attempt takes a place in the semaphore's line of waiters (later callers, on
        any machine, leave it the slots it wants) and waits on its own wake list, which a
        script pushes to once the slots it wants are free and everyone before it is served, at
        most until the nearest lease expiry, the ``poll_interval`` or the deadline, then tries
        again. An uncontended acquire is one round trip.

        Args:
            owner: who holds the lease, e.g. :func:`default_owner`.
            count: slots to take together (all or none), 1 <= count <= capacity.
            timeout: seconds to wait at most; ``None`` waits for ever.
            task_id: shown by :meth:`holders`.

        Raises:
            SlotTimeout: the slots did not come free within ``timeout``.
        """
        self._check_count(count)
        if timeout is not None and not timeout >= 0:
            raise ConfigurationError(
                f"semaphore {self.name!r}: timeout must be >= 0 s or None, got {timeout!r}"
            )
        token = uuid.uuid4().hex  # one token for every attempt: a retried grant is idempotent
        # Its place in line, kept between attempts, and its own wake list (woken when it fits).
        waiter, arrival = f"{owner}/{token}", 0
        wake_key = self.wake_key(waiter)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            result = self.attempt(owner, count, task_id, token, waiter=waiter, arrival_ms=arrival)
            if isinstance(result, Lease):
                return result  # its wake list is empty or expires within a minute
            arrival = result.arrival_ms
            wait = self.poll_interval
            if result.retry_after is not None:
                wait = min(wait, result.retry_after)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.leave([waiter])
                    raise SlotTimeout(
                        f"semaphore {self.name!r}: {count} of {self._capacity} slot(s) did not come free "
                        f"within {timeout:g} s ({self._capacity - result.free} held or wanted by earlier "
                        f"waiters); raise the timeout or the capacity, or see who holds them with "
                        f"`taskpool slots`"
                    )
                wait = min(wait, remaining)
            wait = min(wait, self._max_block)
            # BLPOP takes float seconds; 0 would mean "for ever".
            self.client.blpop([wake_key], timeout=max(wait, 0.001))

    def wake_key(self, group: str) -> str:
        """The wake list of the waiters of ``group`` (a worker's ``owner``, or one blocking
        acquire): the scripts push to it when one of them may be granted; BLPOP it to wait."""
        return f"{self.keys.wake}:{group}"

    def renew(self, lease: Lease) -> float:
        """Extend ``lease`` by ``ttl`` from now; returns (and stores) its new ``expires_at``.

        Raises:
            LeaseLost: the lease had expired or was released; its slots may be someone else's.
        """
        self._check_lease(lease)
        reply = int(self._renew_script(self.keys.as_list(), [lease.token, self._ttl_ms, self._capacity]))
        if reply < 0:
            why = "had expired" if reply == -2 else "is no longer held (released, or expired and reaped)"
            raise LeaseLost(
                f"semaphore {self.name!r}: lease {lease.token} of {lease.owner!r} on slots "
                f"{list(lease.slots)} (fence {lease.fence}) {why}; its slots may belong to another "
                f"holder now. Renew more often than the ttl of {self.ttl:g} s"
            )
        lease.expires_at = reply / 1000.0
        return lease.expires_at

    def release(self, lease: Lease, *, missing_ok: bool = False) -> bool:
        """Free the lease's slots and wake waiters. ``False`` (and a log record) if it held none.

        ``missing_ok``: a lease its holder may have released already (see :meth:`release_token`)
        is no cause for a warning.
        """
        self._check_lease(lease)
        reply = self.release_token(lease.token)
        if reply > 0 or (reply == 0 and missing_ok):
            return reply > 0
        if reply == -1:
            log.error(
                "semaphore %r: lease %s of %r on slots %s (fence %d) had expired before its release: "
                "the holder overran its %g s lease",
                self.name, lease.token, lease.owner, list(lease.slots), lease.fence, self.ttl,
            )  # fmt: skip
        else:
            log.warning(
                "semaphore %r: released lease %s of %r, which held no slot (released twice, or expired)",
                self.name, lease.token, lease.owner,
            )  # fmt: skip
        return False

    def release_token(self, token: str) -> int:
        """Free the slots of the lease ``token`` (from any process): release.lua's reply, the
        number of slots freed, 0 if it held none, -1 if it had expired unreaped."""
        return int(self._release_script(self.keys.as_list(), [token, self._capacity]))

    def release_owner(self, owner: str, *, prefix: bool = False) -> int:
        """Free every slot held by ``owner`` (or by every owner starting with it); returns how many."""
        if not owner:
            raise ConfigurationError(f"semaphore {self.name!r}: release_owner needs a non-empty owner")
        args: list[str | int] = [owner, "prefix" if prefix else "exact", self._capacity]
        return int(self._release_owner_script(self.keys.as_list(), args))

    def reap_expired(self, capacity: int | None = None) -> list[HolderInfo]:
        """Free the slots of every expired lease (a worker that stopped renewing: it died) and
        return what each held, one :class:`HolderInfo` per slot, ``expired`` set. What the next
        acquire would do, for readers that show slots (``taskpool status``, ``taskpool slots``)."""
        reply = self.client.register_script(REAP_LUA)(
            self.keys.as_list(), [self._capacity if capacity is None else capacity]
        )
        reaped = []
        for i in range(0, len(reply), 4):
            token, raw, expires_at_ms = _text(reply[i]), reply[i + 1], float(reply[i + 2])
            if not int(reply[i + 3]):
                continue  # its slots were free already
            info: dict[str, Any] = json.loads(raw)
            for slot in info.get("slots") or []:
                reaped.append(_holder(slot, token, info, expires_at_ms / 1000.0, expired=True))
        return sorted(reaped, key=lambda h: h.slot)

    def holders(self) -> list[HolderInfo]:
        """Every held slot, by slot index (one consistent snapshot; reaps nothing)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self.keys.holders)
        pipe.hgetall(self.keys.info)
        pipe.zrange(self.keys.leases, 0, -1, withscores=True)
        if isinstance(self.client, RedisCluster):  # TIME names no key: no part of a Cluster MULTI
            slot_tokens, infos, scores = pipe.execute()
            seconds, micros = self.client.time(target_nodes=self.client.get_node_from_key(self.keys.holders))
        else:
            pipe.time()
            slot_tokens, infos, scores, (seconds, micros) = pipe.execute()
        now = seconds + micros / 1e6
        info_of = {_text(k): json.loads(v) for k, v in infos.items()}
        expiry_of = {_text(token): score / 1000.0 for token, score in scores}
        result = []
        for slot, raw_token in slot_tokens.items():
            token = _text(raw_token)
            info: dict[str, Any] = info_of.get(token, {})
            expires_at = expiry_of.get(token, 0.0)
            result.append(_holder(slot, token, info, expires_at, expired=expires_at <= now))
        return sorted(result, key=lambda h: h.slot)

    def attempt(
        self,
        owner: str,
        count: int,
        task_id: str | None,
        token: str,
        *,
        waiter: str = "",
        arrival_ms: int = 0,
        leave_on_grant: bool = True,
    ) -> Lease | Refusal:
        """One try at ``count`` slots for the lease ``token`` (one round trip).

        Waiters queued before the caller go first: a grant needs ``count`` free slots beyond the
        ones they want. A refused ``waiter`` (its name: ``"<group>|<rest>"`` or ``"<group>"``, woken
        through :meth:`wake_key` of its group, e.g. a worker's ``"owner|delivery"``) takes a place
        in the queue at ``arrival_ms`` (Redis ms; 0 = now), or keeps the one it has, for
        ``queue_ttl`` seconds unless :meth:`refresh_waiters` extends it; a grant forgets the
        place when ``leave_on_grant`` (else call :meth:`leave`). ``waiter=""`` takes no place.
        """
        if not owner:
            raise ConfigurationError(f"semaphore {self.name!r}: acquire needs a non-empty owner")
        args: list[str | int] = [token, owner, task_id or "", count, self._capacity, self._ttl_ms]
        args += [waiter, arrival_ms, self._queue_ttl_ms]
        args.append("1" if leave_on_grant else "0")
        reply = self._acquire_script(self.keys.as_list(), args)
        if int(reply[0]) == 1:
            _, slots, fence, expires_at_ms = reply
            return Lease(
                semaphore=self.name,
                token=token,
                owner=owner,
                slots=tuple(int(s) for s in slots),
                fence=int(fence),
                expires_at=int(expires_at_ms) / 1000.0,
                task_id=task_id,
            )
        _, retry_ms, free, arrival = reply
        return Refusal(None if int(retry_ms) < 0 else int(retry_ms) / 1000.0, int(free), int(arrival))

    @property
    def _queue_ttl_ms(self) -> int:
        return max(1, round(self.queue_ttl * 1000))

    def join(self, waiter: str, count: int, arrival_ms: int = 0) -> int:
        """Take a place in the queue for ``waiter`` wanting ``count`` slots, without asking for
        them (a request that waits behind another for the same slots); returns its arrival_ms."""
        args: list[str | int] = ["join", waiter, count, arrival_ms, self._queue_ttl_ms]
        return int(self._queue_script(self.keys.as_list(), args))

    def refresh_waiters(self, waiters: list[str]) -> int:
        """Keep the places of ``waiters`` ``queue_ttl`` seconds longer; how many had one."""
        if not waiters:
            return 0
        return int(self._queue_script(self.keys.as_list(), ["refresh", self._queue_ttl_ms, *waiters]))

    def leave(self, waiters: list[str]) -> int:
        """Forget the places of ``waiters`` (they stopped waiting); how many had one."""
        if not waiters:
            return 0
        return int(self._queue_script(self.keys.as_list(), ["leave", self._capacity, *waiters]))

    def waiters(self) -> list[tuple[str, int, float]]:
        """``(waiter, slots wanted, arrival)`` in queue order (arrival: Redis epoch seconds)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.zrange(self.keys.queue, 0, -1, withscores=True)
        pipe.hgetall(self.keys.wants)
        queued, wants = pipe.execute()
        counts = {_text(k): int(v) for k, v in wants.items()}
        return [(_text(w), counts.get(_text(w), 0), score / 1000.0) for w, score in queued]

    def _checked_capacity(self, capacity: int) -> int:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigurationError(
                f"semaphore {self.name!r}: capacity must be an int >= 1, got {capacity!r}"
            )
        return capacity

    def _check_count(self, count: int) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigurationError(f"semaphore {self.name!r}: count must be an int >= 1, got {count!r}")
        if count > self._capacity:
            raise ConfigurationError(
                f"semaphore {self.name!r}: count={count} exceeds capacity={self._capacity}, "
                f"so it could never be granted"
            )

    def _check_lease(self, lease: Lease) -> None:
        if lease.semaphore != self.name:
            raise ValueError(f"lease of semaphore {lease.semaphore!r} given to semaphore {self.name!r}")
