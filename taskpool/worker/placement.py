"""Where a request that must wait for its slots waits: on this worker, or on one with room.

The admission gate (:mod:`taskpool.worker.gate`) holds a request whose slots are taken in the
worker's main process, and lends the worker a prefetch slot for it, so that other tasks keep
flowing. Alone, a worker should do exactly that. With other workers on the same queue, holding
everything it cannot run is hoarding: the first worker to reach a GPU backlog took all of it
while another host's free GPU sat idle (issue 17). This module is the rule that decides, with
no Redis and no Celery in it; the gate applies it and :mod:`taskpool.stores.peers` carries
what workers tell each other.

The rule, per semaphore ``S`` a waiting request needs:

- **Next in line.** A worker lines up at most :func:`bound` requests for ``S`` (its capacity
  in requests: one per GPU, per ``{hostname}`` slot, per ``max_in_flight``): enough to fill
  every slot of ``S`` the moment it frees, without a trip to Redis. Holding those is always
  useful. A request beyond them is *surplus*.
- **Room.** A worker has room for a task when a request of it would start at once or be next
  in line: every semaphore it needs has fewer than :func:`bound` waiters (plus, for its own
  GPUs and ``max_in_flight``, the slots it does not hold). Each worker publishes its room per
  task and the queues it consumes (every second, and within a tenth of a second of a change),
  and only while its prefetch window can take a message.
- **Surplus goes where there is room.** A surplus request that arrives while another live
  worker on its queue has room for its task goes back to the head of its queue at once
  (:func:`taskpool.compat.kombu.requeue_at_head`: its order, retry count and body kept, moved
  in one transaction). That happens inside the consumer's read of the message, when this
  worker's own BRPOP is not outstanding, and Redis serves a pushed message to the client that
  has been blocked the longest: a worker that has credit and nothing to do. A worker also
  re-offers its oldest surplus request whenever a peer publishes room for its task (a host
  that freed its GPU, a worker that just started).
- **Kept when no one else wants it.** A request that comes back to the worker that handed it
  back (no other worker took it) is kept, and waits here as before, lending prefetch, so the
  queue behind it keeps flowing. A re-offer made outside the read can come back to the
  re-offering worker itself (its own BRPOP may be the oldest); it then passes it on once more
  from inside the read. So a request moves at most a few hops, never in a loop.
- **No peer: nothing changes.** Without another live worker with room, nothing is handed
  back: one worker keeps today's behaviour exactly (no slot idle while work waits, other tasks
  flowing on the prefetch it borrows).

Why not the other designs the issue names:

- *Take a message only when a slot is likely free*: Celery's consumer pops whatever is at the
  head of its queues; a worker cannot choose to take only the messages it can run. Cancelling
  and re-adding the consumer of a queue (the ``.gpu`` queue when the GPUs are busy) would fit
  GPU queues alone, races with an outstanding BRPOP, and would stop a shared queue's other
  tasks with it.
- *Bounded holding alone* (hand back everything beyond the bound): when every worker is at its
  bound, the handed-back requests sit at the head of the queue and every other task queued
  behind them waits (head-of-line blocking), or bounce between workers on every read.
- *Hand back after a short wait*: lands wherever a BRPOP is oldest, often the same worker, and
  moves requests around even when no host has room.
- *A waiting list per semaphore in Redis that every host serves*: a second broker beside
  kombu's queues: messages outside the queue that ``inspect``, queue depth, the autoscaler and
  kombu's own restore of unacked messages do not see, and two workers sharing one delivery.
  Room and hand-backs keep every message either in its queue or delivered to one worker.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from taskpool.core.limits import Need
from taskpool.core.names import GPU, MAX_IN_FLIGHT

T = TypeVar("T")

#: Seconds a hand-back is remembered: a request that comes back within it was wanted by no one.
MARK_TTL = 10.0
#: Marks kept at most (the oldest are forgotten first).
MAX_MARKS = 10_000

_OFFERED = "offered"  # handed back from the read of its message: if it comes back, keep it
_REOFFERED = "reoffered"  # handed back from a re-offer: if it comes back, pass it on once more


def bound(need: Need) -> int:
    """Requests worth lining up for ``need`` on one worker: one per request its slots can run."""
    return max(1, need.capacity // max(1, need.count))


def surplus_flags(waiting: Sequence[Sequence[Need]]) -> list[bool]:
    """For requests waiting in arrival order (each given by its needs), which are surplus:
    some semaphore it needs has :func:`bound` requests waiting before it."""
    seen: Counter[str] = Counter()
    flags = []
    for needs in waiting:
        flags.append(any(seen[n.name] >= bound(n) for n in needs))
        seen.update(n.name for n in needs)
    return flags


def is_surplus(needs: Sequence[Need], waiting: Mapping[str, int]) -> bool:
    """Whether one more request with ``needs`` would be surplus, ``waiting`` being the requests
    already waiting per semaphore."""
    return any(waiting.get(n.name, 0) >= bound(n) for n in needs)


#: Kinds of semaphore whose slots only this worker takes (its machine's GPUs, its own
#: ``max_in_flight``): the slots it does not hold itself are free.
LOCAL_KINDS = frozenset({GPU, MAX_IN_FLIGHT})


def room_for(needs: Sequence[Need], waiting: Mapping[str, int], held: Mapping[str, int] | None = None) -> int:
    """How many more requests with ``needs`` this worker would start or line up (0: none).

    Args:
        waiting: requests waiting here, per semaphore.
        held: slots this worker holds, per semaphore; given, the free slots of a semaphore of
            :data:`LOCAL_KINDS` count too (a request offered for them starts at once). The free
            slots of a shared semaphore are not known here: they do not count.
    """
    if not needs:
        return 0

    def room(n: Need) -> int:
        free = 0
        if held is not None and n.kind in LOCAL_KINDS:
            free = max(0, n.capacity - held.get(n.name, 0)) // max(1, n.count)
        return bound(n) - waiting.get(n.name, 0) + free

    return max(0, min(room(n) for n in needs))


@dataclass(frozen=True)
class Peer:
    """Another worker, as its published record describes it."""

    owner: str
    node: str
    queues: frozenset[str]
    room: Mapping[str, int]  # task name -> requests it would line up now
    seq: int  # increases with each publish

    @classmethod
    def from_record(cls, owner: str, record: Mapping[str, Any]) -> Peer | None:
        try:
            room = {str(task): int(n) for task, n in dict(record.get("room") or {}).items() if int(n) > 0}
            return cls(
                owner=owner,
                node=str(record.get("node", "")),
                queues=frozenset(str(q) for q in record.get("queues") or ()),
                room=room,
                seq=int(record.get("seq", 0)),
            )
        except (TypeError, ValueError, AttributeError):
            return None


@dataclass
class Placement:
    """This worker's side of the rule: the peers it knows, its marks, and the re-offers it makes.

    Args:
        owner: this worker's owner (``host:pid``); its own record is not a peer.
        clock: monotonic seconds (a test passes its own).
    """

    owner: str
    clock: Callable[[], float] = time.monotonic
    _peers: dict[str, Peer] = field(default_factory=dict)  # replaced whole, never changed in place
    _marks: dict[str, tuple[str, float]] = field(default_factory=dict)
    _offered_at: dict[str, int] = field(default_factory=dict)  # peer owner -> its seq at our last re-offer
    # The consumer's thread reads peers and marks; the placement thread replaces the peers and,
    # without an event loop (gevent), marks requests it re-offers.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- peers ----------------------------------------------------------------------------
    def update_peers(self, records: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the known peers with ``records`` (owner -> record; this worker's own is skipped)."""
        peers = {}
        for owner, record in records.items():
            if owner != self.owner and (peer := Peer.from_record(owner, record)) is not None:
                peers[owner] = peer
        self._peers = peers
        self._offered_at = {o: s for o, s in self._offered_at.items() if o in peers}

    def peers(self) -> list[Peer]:
        return list(self._peers.values())

    def room_elsewhere(self, task: str, queue: str | None) -> int:
        """Requests of ``task`` that live peers consuming ``queue`` would line up now."""
        if queue is None:
            return 0
        return sum(p.room.get(task, 0) for p in self._peers.values() if queue in p.queues)

    # -- at the read of a message ---------------------------------------------------------
    def offer_at_receipt(self, task_id: str) -> bool:
        """A surplus request just read while a peer has room: hand it back (``True``), or keep
        it because it came back after this worker handed it back (``False``)."""
        with self._lock:
            if self._mark(task_id) == _OFFERED:
                del self._marks[task_id]
                return False
            self._set_mark(task_id, _OFFERED)
            return True

    def note_reoffered(self, task_id: str) -> None:
        """``task_id`` was handed back from a re-offer (outside the read of a message)."""
        with self._lock:
            self._set_mark(task_id, _REOFFERED)

    # -- re-offers ------------------------------------------------------------------------
    def pick_reoffers(self, candidates: Sequence[tuple[T, str, str | None]]) -> list[T]:
        """Which surplus requests to hand back now, for peers that published room.

        Args:
            candidates: surplus requests, oldest first, as ``(handle, task name, queue)``.

        Returns:
            Handles, oldest first: at most each peer's room per task, and nothing more for a
            peer until it publishes again (its room then says whether it got them).
        """
        budget = {
            p.owner: dict(p.room)
            for p in self._peers.values()
            if p.room and self._offered_at.get(p.owner) != p.seq
        }
        picked: list[T] = []
        used: set[str] = set()
        for handle, task, queue in candidates:
            for peer in self._peers.values():
                left = budget.get(peer.owner, {})
                if queue in peer.queues and left.get(task, 0) > 0:
                    left[task] -= 1
                    used.add(peer.owner)
                    picked.append(handle)
                    break
        for owner in used:
            self._offered_at[owner] = self._peers[owner].seq
        return picked

    # -- marks (call with the lock held) ----------------------------------------------------
    def _mark(self, task_id: str) -> str | None:
        entry = self._marks.get(task_id)
        if entry is None:
            return None
        if self.clock() - entry[1] > MARK_TTL:
            del self._marks[task_id]
            return None
        return entry[0]

    def _set_mark(self, task_id: str, kind: str) -> None:
        self._marks.pop(task_id, None)
        self._marks[task_id] = (kind, self.clock())
        if len(self._marks) > MAX_MARKS:
            now = self.clock()
            stale = [t for t, (_, at) in self._marks.items() if now - at > MARK_TTL]
            for tid in stale or list(self._marks)[:1]:
                del self._marks[tid]
