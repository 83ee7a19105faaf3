"""The admission gate: a request enters the pool only when its limits are granted.

Like Celery's own ``rate_limit``, the worker's main process holds a request that must wait
and hands it to the pool when its slots are granted, so a waiting request never sits in a
pool slot and other tasks on the worker keep running. The main process owns the leases,
renews them on one thread (:class:`~taskpool.stores.semaphores.LeaseKeeper`) and releases them
when the request ends: success, failure, retry, revoke, or a killed child (``WorkerLostError``).

How it plugs into Celery (public hooks only): the task strategy
(:mod:`taskpool.worker.strategy`) builds Celery's default strategy over :meth:`Gate.view`, a
view of the consumer whose ``on_task_request`` / ``apply_eta_task`` go through the gate and
whose ``pool.apply_async`` wraps the completion callbacks to release the leases first. The
consumer bootstep :class:`~taskpool.worker.admission.AdmissionStep` creates the gate and
carries it across connection losses.

A request's cluster-wide rates (``rates=``) are part of the same decision: the gate takes a token
of each, then the slots, and refunds the tokens when a slot is missing; a request refused by a
rate is looked at again when its next token is due (a hub timer, or the waiter thread without an
event loop). Celery's own per-worker ``rate_limit`` buckets come first
(:func:`~taskpool.compat.celery.rate_limit_handlers`). Each held request keeps what refused it
(:mod:`taskpool.worker.waits`), for ``inspect stats``, ``taskpool status`` and the metrics.

With other workers on the same queues, the gate holds a waiting request only while that is
useful: :mod:`taskpool.worker.placement` has the rule (next in line, room, surplus), and a
request beyond it goes back to the head of its queue for a worker with room.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import redis
from celery.worker.state import task_ready, task_reserved

from taskpool.compat.celery import rate_limit_handlers
from taskpool.compat.kombu import requeue_at_head, window_has_room
from taskpool.core import names
from taskpool.core.errors import ConfigurationError
from taskpool.core.keys import bind
from taskpool.core.limits import Need, is_keyed
from taskpool.core.options import TaskOptions
from taskpool.core.rates import RateNeed, rate_needs_of
from taskpool.stores.peers import PeerBoard
from taskpool.stores.semaphores import Lease
from taskpool.worker import state
from taskpool.worker.holdings import Holdings, granted
from taskpool.worker.placement import Placement, bound, is_surplus, room_for, surplus_flags
from taskpool.worker.waits import RATE, Wait, WaitTimes, summary

logger = logging.getLogger("taskpool.admission")

#: Seconds between two looks of the placement thread at its room, its surplus and its peers.
PLACEMENT_TICK = 0.1
#: Seconds between two publishes of this worker's record when nothing changed (it lives 3 s).
PUBLISH_EVERY = 1.0
#: Seconds between two reads of the peers' records while this worker holds no surplus.
READ_PEERS_EVERY = 0.5
#: Seconds before a rate conforms again that the event loop looks (its turn takes about that long).
RATE_LEAD = 0.001


class View:
    """A consumer (or pool) with some attributes replaced; everything else is the original's."""

    def __init__(self, target: Any, **overrides: Any) -> None:
        self._target = target
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class _Waiting:
    __slots__ = ("names", "needs", "rates", "request", "since", "wait")

    def __init__(self, request: Any, needs: list[Need], rates: list[RateNeed], wait: Wait) -> None:
        self.request = request
        self.needs = needs
        self.rates = rates
        self.names = names_of(needs, rates)
        self.wait = wait  # what refused it last
        self.since = time.monotonic()


def names_of(needs: list[Need], rates: list[RateNeed]) -> set[str]:
    """What a request competes for: its semaphores and its rates (first come, first served)."""
    return {n.name for n in needs} | {f"rate {r.name}" for r in rates}


def arguments_of(request: Any) -> dict[str, Any]:
    """A request's arguments by parameter name (keyed limit and rate names are formatted from them)."""
    signature = getattr(request.task, "taskpool_signature", None)
    return bind(signature, getattr(request, "args", None) or (), getattr(request, "kwargs", None) or {})


def queue_of(request: Any) -> str | None:
    """The queue a request's message came from (taskpool's queues are routed by their name)."""
    info = getattr(request, "delivery_info", None) or {}
    key = info.get("routing_key") if isinstance(info, dict) else None
    return str(key) if key else None


class Gate:
    """Admission for one worker process (its consumer).

    Args:
        app: the TaskPool app.
        consumer: Celery's consumer of this worker.
        client: Redis client (shared, thread-safe pool).
        ttl: lease length, seconds; renewed every ttl/3.
        on_refused: ``(request, exc)``, ends a request that can never be admitted (its task
            needs a limit with no size, or more GPU slots than the host has).
        spread: publish this worker's room and hand surplus requests to workers with room
            (:mod:`taskpool.worker.placement`); needs ``client``.
        requeue: puts a request's message back at the head of its queue (``True``), or says it
            cannot (``False``); :func:`~taskpool.compat.kombu.requeue_at_head` by default.

    Building it starts nothing; :meth:`start` (the consumer's, on its event loop's thread)
    starts the lease keeper, the waiter thread and the placement thread, :meth:`close` stops
    them.
    """

    def __init__(
        self,
        app: Any,
        consumer: Any,
        client: redis.Redis,
        ttl: float,
        *,
        on_refused: Callable[[Any, ConfigurationError], None],
        spread: bool = True,
        requeue: Callable[[Any], bool] = requeue_at_head,
    ) -> None:
        self.app = app
        self.on_refused = on_refused
        self.consumer = consumer
        self.client = client
        self.ttl = ttl
        self.owner = f"{consumer.hostname}:{os.getpid()}"
        self.holdings = Holdings(
            client, app.settings.keyspace, ttl, node=consumer.hostname, owner=self.owner, on_lost=self._lost
        )
        self._waiting: deque[_Waiting] = deque()
        # Granted by the waiter thread, handed to the event loop, not yet dispatched.
        self._handing: dict[str, Any] = {}
        self._round = threading.Lock()  # one admission round at a time (waiter thread or event loop)
        self._admit_pending = False  # an admission round is scheduled on the event loop
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._hub = getattr(consumer, "hub", None)
        self._loop_thread: int | None = None  # the consumer's event loop's thread, set by start()
        self._held_extra = 0  # prefetch slots lent to waiting requests
        self.max_waiting_extra = 16  # up to max(16, 4 x pool size), once the pool has started
        self.stats = {
            "admitted": 0,
            "waited": 0,
            "released": 0,
            "failed_admission": 0,
            "lost_leases": 0,
            "handed_back": 0,  # surplus requests put back at the head of their queue
            "reoffered": 0,  # ... of them, handed back later, for a peer that published room
            "kept": 0,  # surplus requests that came back (no other worker took them): held here
        }
        self._waiter: threading.Thread | None = None
        self.wait_times = WaitTimes()  # taskpool_wait_seconds{reason}
        self._rate_timer_at: float | None = None  # when the event loop's next rate look is due
        self._rate_timer: Any = None  # its hub timer entry (one at most)
        self.placement = Placement(self.owner)
        self.board = PeerBoard(client, app.settings.keyspace, self.owner) if spread and client else None
        self._requeue = requeue
        self._placer: threading.Thread | None = None
        self._seq = 0  # of this worker's published record
        self._published: tuple[dict[str, int], list[str], int] | None = None  # room, queues, admitted
        self._next_publish = 0.0
        self._next_read = 0.0

    def start(self) -> None:
        """Start renewing and waiting, on the consumer's thread (again at each reconnect: a no-op)."""
        self._loop_thread = threading.get_ident()
        processes = getattr(self.consumer.pool, "num_processes", 1)  # a started pool's size
        self.max_waiting_extra = max(16, 4 * int(processes or 1))
        if self._waiter is None:
            self.holdings.start()
            self._waiter = threading.Thread(target=self._wait_loop, name="taskpool-admission", daemon=True)
            self._waiter.start()
        if self._placer is None and self.board is not None:
            placer = threading.Thread(target=self._placement_loop, name="taskpool-placement", daemon=True)
            self._placer = placer
            placer.start()

    # -- Celery glue -------------------------------------------------------------------
    def view(self) -> View:
        """The consumer as the strategy should see it."""
        c = self.consumer
        pool = View(c.pool, apply_async=self._pool_apply_async(c.pool.apply_async))
        # Celery's own rate_limit (per worker) first, then the gate.
        return View(
            c,
            on_task_request=self.admit,
            apply_eta_task=self._apply_eta_task,
            pool=pool,
            **rate_limit_handlers(c, self.admit),
        )

    def _apply_eta_task(self, request: Any) -> None:
        task_reserved(request)
        self.admit(request)
        self.consumer.qos.decrement_eventually()

    def _pool_apply_async(self, apply_async: Any) -> Any:
        def wrapped(target: Any, *, callback: Any = None, error_callback: Any = None, **kwargs: Any) -> Any:
            # Celery passes the request's own bound methods (on_success, on_failure) as callbacks.
            request = getattr(callback, "__self__", None) or getattr(error_callback, "__self__", None)
            key = state.held_key(request) or self._key_of_task(kwargs.get("correlation_id"))

            def release_then(handler: Any) -> Any:
                def run(*a: Any, **kw: Any) -> Any:
                    self.release(key, admit=False)
                    try:
                        return handler(*a, **kw) if handler is not None else None
                    finally:
                        self._admit_after_release()

                return run

            return apply_async(
                target, callback=release_then(callback), error_callback=release_then(error_callback), **kwargs
            )

        return wrapped

    # -- admission ---------------------------------------------------------------------
    def admit(self, request: Any) -> None:
        """Dispatch ``request`` now if its slots are free, else hold it until they are."""
        options: TaskOptions | None = getattr(request.task, "taskpool", None)
        if options is None:
            self.consumer.on_task_request(request)
            return
        try:
            arguments = arguments_of(request) if is_keyed(options) else None
            needs = self.holdings.needs(options, arguments)
            rates = rate_needs_of(options, arguments)
        except ConfigurationError as exc:
            self._refuse(request, exc)
            return
        competing = names_of(needs, rates)
        with self._lock:
            ahead = [w for w in self._waiting if w.names & competing]
        wait = ahead[0].wait if ahead else self._try(request, needs, rates)
        if wait is None:
            self._dispatch(request)
            return
        if self._offer_at_receipt(request, needs):
            return
        if ahead and wait.kind != RATE and needs:
            self._join(request, needs)  # it waits here: in line at once (not if handed back)
        self._look_again_at(wait)
        with self._lock:
            self._waiting.append(_Waiting(request, needs, rates, wait))
            if self._held_extra < self.max_waiting_extra:
                # Let the worker fetch other work while this one waits (like an ETA task).
                self._held_extra += 1
                state.set_prefetch_lent(request, True)
                self.consumer.qos.increment_eventually()
        self.stats["waited"] += 1
        self._wake.set()

    def _try(self, request: Any, needs: list[Need], rates: list[RateNeed]) -> Wait | None:
        """Take every need and rate token of ``request`` or none (``None``: granted; else what it
        waits for); what was granted travels with it to the pool."""
        key = state.admission_key(request)
        held = self.holdings.take(key, request.id, needs, rates)
        if isinstance(held, Wait):
            return held
        if (at := self.holdings.rate_times.pop(key, None)) is not None:
            request.request_dict[names.RATE_AT_KEY] = at
        # The GPUs it may use, and the leases the pool process frees as soon as the function returns.
        leases, gpus = granted(needs, held)
        state.set_granted(request, leases, gpus)
        return None

    def _join(self, request: Any, needs: list[Need]) -> None:
        """A request that waits behind an earlier one of this worker takes its places in line
        at once (arrival order holds across workers, see :meth:`Holdings.take`)."""
        try:
            self.holdings.join(state.admission_key(request), needs)
        except redis.RedisError:
            logger.warning("taskpool: could not queue %s[%s]; it queues at its first try", request.name,
                           request.id, exc_info=True)  # fmt: skip

    def _key_of_task(self, task_id: str | None) -> str | None:
        """The admission key of the one held delivery of ``task_id`` (``None`` if not just one)."""
        if task_id is None:
            return None
        keys = [k for k in self.holdings.delivery_keys() if state.task_id_of_key(k) == task_id]
        return keys[0] if len(keys) == 1 else None

    def _end_loan(self, request: Any) -> None:
        """The request no longer waits here: the prefetch slot lent for it (if any) ends."""
        if state.prefetch_lent(request):
            state.set_prefetch_lent(request, False)
            with self._lock:
                self._held_extra -= 1
            self.consumer.qos.decrement_eventually()

    def _dispatch(self, request: Any) -> None:
        self.stats["admitted"] += 1
        self._end_loan(request)
        if request.revoked():
            self.release(state.admission_key(request))
            return
        try:
            self.consumer.on_task_request(request)
        except Exception:
            self.release(state.admission_key(request))
            raise

    def _dispatch_handed(self, key: str) -> None:
        """Dispatch a request the waiter thread granted, unless a connection loss dropped it."""
        with self._lock:
            request = self._handing.pop(key, None)
        if request is not None:
            self._dispatch(request)

    def _refuse(self, request: Any, exc: ConfigurationError) -> None:
        """A request that can never be admitted fails now (a batch: each input on its own)."""
        batch = getattr(request, "members", None)
        if batch is not None:
            for member in batch:
                self._refuse(member, exc)
                request.batcher.done(member)
            return
        self.stats["failed_admission"] += 1
        logger.error("taskpool: %s[%s] refused: %s", request.name, request.id, exc)
        self.on_refused(request, exc)

    def release(self, key: str | None, *, admit: bool = True) -> None:
        """Give back the leases of one admitted delivery (its :func:`~taskpool.worker.state.admission_key`).

        With ``admit``, waiters are then admitted on the event loop's next turn.
        """
        if key is None or not self.holdings.give_back(key):
            return
        self.stats["released"] += 1
        if admit:
            self._admit_soon()

    def _admit_after_release(self) -> None:
        """After a request's completion callback: admit waiters now if on the event loop."""
        if self._hub is not None and threading.get_ident() == self._loop_thread:
            self._admit_on_loop()  # the freed slot goes to the next waiter without a thread hop
        else:
            self._admit_soon()  # e.g. a threads pool runs callbacks on its own threads

    # -- admitting waiters ---------------------------------------------------------------
    def _admit_soon(self) -> None:
        """After a local release, admit waiters on the event loop's next turn.

        The slot is free now, in this process: taking it from the event loop saves the waiter
        thread's wake-up (BLPOP), its hand-back (``call_soon``) and two GIL switches per
        hand-off. The waiter thread remains for slots freed elsewhere (other workers, expiries).
        """
        if self._hub is None or not self._waiting:
            return
        with self._lock:
            if self._admit_pending:
                return
            self._admit_pending = True
        self._hub.call_soon(self._admit_on_loop)

    def _admit_on_loop(self) -> None:
        with self._lock:
            self._admit_pending = False
            if not self._waiting:
                return
        try:
            self._admit_round(on_loop=True)
        except redis.RedisError:
            logger.warning(
                "taskpool: admission could not reach Redis; the waiter thread retries", exc_info=True
            )
            self._wake.set()
        except Exception:  # runs inside pool callbacks: never let it take the event loop down
            logger.exception("taskpool: admission round failed")

    def _admit_round(self, *, on_loop: bool) -> bool | None:
        """Try the waiting requests in arrival order; ``True`` if any was admitted.

        One round at a time (the waiter thread or the event loop): on the loop, a round already
        running elsewhere is left to finish (``None``). A request whose semaphores an earlier
        waiter wants is skipped this round: first come, first served.
        """
        if not self._round.acquire(blocking=not on_loop):
            return None
        try:
            with self._lock:
                waiting = list(self._waiting)
            granted = False
            taken: set[str] = set()
            for w in waiting:
                if w.names & taken:
                    continue
                wait = self._try(w.request, w.needs, w.rates)
                if wait is not None:
                    w.wait = wait
                    taken |= w.names
                    if on_loop:
                        self._look_again_at(wait)
                    continue
                self.wait_times.observe(w.wait.kind, time.monotonic() - w.since)
                key = state.admission_key(w.request)
                with self._lock:
                    dropped = w not in self._waiting  # a connection loss dropped it meanwhile
                    if not dropped:
                        self._waiting.remove(w)
                        if not on_loop:
                            self._handing[key] = w.request
                if dropped:
                    self.release(key)
                elif on_loop:
                    self._dispatch(w.request)
                    granted = True
                else:
                    self._hand_back(key)
                    granted = True
            return granted
        finally:
            self._round.release()

    def _look_again_at(self, wait: Wait) -> None:
        """On the event loop: a rate conforms again at a known time, so run a round then (a hub
        timer; a ``call_soon`` from the waiter thread would wait for the loop's next poll)."""
        at = wait.retry_at
        if at is None or self._hub is None or threading.get_ident() != self._loop_thread:
            return
        if self._rate_timer is not None:
            if self._rate_timer_at is not None and self._rate_timer_at <= at:
                return  # a look is due before then: it schedules the next one
            # One timer at most: the hub fires at most 10 due timers per turn, then polls for 1 s.
            self._rate_timer.cancel()
        self._rate_timer_at = at
        # A turn of the loop takes about a millisecond: start it that much early (an early look is
        # refused by the rate and looks again).
        delay = max(at - time.monotonic() - RATE_LEAD, 0.0002)
        self._rate_timer = self._hub.call_later(delay, self._on_rate_timer)

    def _on_rate_timer(self) -> None:
        self._rate_timer = self._rate_timer_at = None
        self._admit_on_loop()

    # -- the waiter thread -------------------------------------------------------------
    def _wait_loop(self) -> None:
        while not self._stopping.is_set():
            self.holdings.flush_abandoned()
            with self._lock:
                waiting = list(self._waiting)
            if not waiting:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self.holdings.refresh_queued()  # keeps the waiting requests' places in line
            except redis.RedisError:
                logger.debug("taskpool: could not refresh places in line; retrying", exc_info=True)
            if self._hub is not None:
                # The event loop admits (one thread takes the slots and dispatches, no hand-off);
                # this thread only turns wake-ups from elsewhere into admission rounds.
                self._admit_soon()
            else:
                try:
                    if self._admit_round(on_loop=False):
                        continue
                except redis.RedisError:
                    logger.exception("taskpool: admission could not reach Redis; retrying")
                    time.sleep(0.5)
                    continue
            wake_keys = self.holdings.wake_keys([n for w in waiting for n in w.needs])
            # A rate conforms again at a known time: look then, after a local sleep (Redis ends a
            # BLPOP's timeout tens of milliseconds late: too coarse for a rate).
            timeout = 0.5
            retry = [w.wait.retry_at for w in waiting if w.wait.retry_at is not None]
            if retry and self._hub is None:  # with an event loop, its timers look at rates
                timeout = min(timeout, max(min(retry) - time.monotonic(), 0.0005))
            try:
                if wake_keys and timeout >= 0.5:
                    self.client.blpop(wake_keys, timeout=timeout)
                else:
                    self._stopping.wait(timeout)
            except redis.RedisError:
                time.sleep(0.5)

    def _hand_back(self, key: str) -> None:
        """Run the dispatch on the consumer's own thread (its event loop), where Celery expects it."""
        if self._hub is not None:
            self._hub.call_soon(self._dispatch_handed, key)
        else:
            self._dispatch_handed(key)

    # -- placement: surplus requests go where there is room --------------------------------
    def _waiting_counts(self) -> Counter[str]:
        """Requests waiting per semaphore (call with ``self._lock`` held)."""
        return Counter(n.name for w in self._waiting for n in w.needs)

    def _offer_at_receipt(self, request: Any, needs: list[Need]) -> bool:
        """A request that must wait, just read: hand it back if it is surplus here and a peer on
        its queue has room for its task (unless it came back to this worker: then it stays)."""
        if getattr(request, "members", None) is not None:
            return False  # a batch waits here: its inputs were collected by this worker's batcher
        with self._lock:
            surplus = is_surplus(needs, self._waiting_counts())
        if not surplus or self.placement.room_elsewhere(request.name, queue_of(request)) <= 0:
            return False
        if not self.placement.offer_at_receipt(request.id):
            self.stats["kept"] += 1
            return False
        return self._return_to_queue(request)

    def _return_to_queue(self, request: Any) -> bool:
        """Put ``request``'s message back at the head of its queue and forget the request."""
        try:
            done = self._requeue(request.message)
        except Exception:  # Redis unreachable: the message is still ours, the request waits here
            logger.warning("taskpool: could not hand %s[%s] back; it waits here", request.name, request.id,
                           exc_info=True)  # fmt: skip
            return False
        if not done:
            return False
        task_ready(request)  # no longer reserved by this worker (Celery's bookkeeping)
        self.holdings.leave(state.admission_key(request))
        self.stats["handed_back"] += 1
        logger.debug("taskpool: %s[%s] handed back for a worker with room", request.name, request.id)
        return True

    def _surplus(self) -> list[tuple[_Waiting, str, str | None]]:
        """The surplus waiters, oldest first, as ``(waiter, task, queue)`` (batches excluded)."""
        with self._lock:
            waiting = list(self._waiting)
        flags = surplus_flags([w.needs for w in waiting])
        return [
            (w, w.request.name, queue_of(w.request))
            for w, flag in zip(waiting, flags, strict=True)
            if flag and getattr(w.request, "members", None) is None
        ]

    def _reoffer(self, w: _Waiting) -> None:
        """Hand back a surplus waiter for a peer that published room (on the consumer's thread)."""
        if not self._round.acquire(blocking=self._hub is None):
            return  # an admission round runs: the next tick looks again
        try:
            with self._lock:
                if w not in self._waiting:
                    return  # admitted or dropped meanwhile
                index = self._waiting.index(w)
                if not surplus_flags([x.needs for x in self._waiting])[index]:
                    return  # next in line by now
                del self._waiting[index]
            if self._return_to_queue(w.request):
                self._end_loan(w.request)
                self.placement.note_reoffered(w.request.id)
                self.stats["reoffered"] += 1
            else:
                with self._lock:
                    self._waiting.insert(min(index, len(self._waiting)), w)
        finally:
            self._round.release()

    def room(self) -> dict[str, int]:
        """Task name -> requests of it this worker would line up now, for the gated tasks of the
        queues it consumes (batched tasks excluded: their batches are never handed back); none
        while its prefetch window is full."""
        app = self.app
        tasks = getattr(app, "tasks", None) or {}
        consumed = set(self._consumed_queues())
        if not window_has_room(self.consumer):
            return {}  # not polling its queues: a request handed back would not reach it
        with self._lock:
            counts = self._waiting_counts()
        held: Counter[str] = Counter()
        for leases in self.holdings.held().values():
            for sem, lease in leases:
                held[sem.name] += lease.count
        room = {}
        for name, task in list(tasks.items()):
            options: TaskOptions | None = getattr(task, "taskpool", None)
            if options is None or not options.has_limits or options.batch is not None:
                continue
            if is_keyed(options):
                continue  # its semaphores depend on each call's arguments
            if app.settings.queue_for(options.pool, gpu=bool(options.gpu_slots)) not in consumed:
                continue
            try:
                needs = self.holdings.needs(options)
            except ConfigurationError:
                continue  # can never run here
            if (n := room_for(needs, counts, held)) > 0:
                room[name] = n
        return room

    def _consumed_queues(self) -> list[str]:
        queues = getattr(getattr(self.app, "amqp", None), "queues", None)
        return sorted(getattr(queues, "consume_from", None) or ())

    def _record(self, room: dict[str, int], queues: list[str]) -> dict[str, Any]:
        """What this worker publishes (see :mod:`taskpool.stores.peers`)."""
        return {"node": self.consumer.hostname, "queues": queues, "room": room, "seq": self._seq}

    def placement_tick(self) -> None:
        """Publish this worker's room when it changed (or every second), read the peers', and
        re-offer surplus requests to peers that have room. One turn of the placement thread."""
        board = self.board
        if board is None:
            return
        now = time.monotonic()
        # A worker that just started a request it was offered may still have the same room (its
        # slot was free: it ran the request instead of lining it up); publishing at each admission
        # tells the others at once, so they offer the next one (when there are others).
        admitted = self.stats["admitted"] if self.placement.peers() else 0
        mine = (self.room(), self._consumed_queues(), admitted)
        if mine != self._published or now >= self._next_publish:
            self._seq += 1
            board.publish(self._record(*mine[:2]))
            self._published, self._next_publish = mine, now + PUBLISH_EVERY
        surplus = self._surplus()
        if surplus or now >= self._next_read:  # holding surplus: look for room every tick
            self.placement.update_peers(board.read())
            self._next_read = now + READ_PEERS_EVERY
        if not surplus:
            return
        for w in self.placement.pick_reoffers(surplus):
            if self._hub is not None:
                self._hub.call_soon(self._reoffer, w)
            else:
                self._reoffer(w)

    def _placement_loop(self) -> None:
        while not self._stopping.wait(PLACEMENT_TICK):
            try:
                self.placement_tick()
            except redis.RedisError:
                logger.debug("taskpool: placement could not reach Redis; retrying", exc_info=True)
                self._stopping.wait(1.0)
            except Exception:
                logger.exception("taskpool: placement tick failed")
                self._stopping.wait(1.0)

    # -- connection loss -----------------------------------------------------------------
    def connection_lost(self) -> list[Any]:
        """Forget every request not yet dispatched, and return them.

        Their messages were delivered on the channel that just closed: they can no longer be
        acked there, and Celery itself drops its reserved requests at this point (``on_close``).
        They never ran, so their leases (if any were granted) are given back now; the caller
        puts their messages back on the queue at reconnect. Requests already in the pool keep
        their leases until they finish, so the limits hold across the reconnect.
        """
        with self._lock:
            dropped = [w.request for w in self._waiting] + list(self._handing.values())
            self._waiting.clear()
            self._handing.clear()
            self._held_extra = 0  # lent on the old channel's QoS; the new connection has its own
        for request in dropped:
            self.holdings.abandon(state.admission_key(request))  # the waiter thread leaves the lines
            self.release(state.admission_key(request))
        if dropped:
            self.stats["dropped_at_reconnect"] = self.stats.get("dropped_at_reconnect", 0) + len(dropped)
        return dropped

    def waiting_count(self) -> int:
        """How many requests wait in the gate for their limits or GPU slots (autoscaler input)."""
        with self._lock:
            return len(self._waiting)

    def _lost(self, lease: Lease, exc: Exception) -> None:  # the holdings' on_lost
        self.stats["lost_leases"] += 1
        logger.error("taskpool: task %s lost its lease on %s: %s", lease.task_id, lease.semaphore, exc)

    # -- status and shutdown ------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        held = {
            state.task_id_of_key(key): [(s.name, list(lease.slots), lease.fence) for s, lease in v]
            for key, v in self.holdings.held().items()
        }
        with self._lock:
            waiting = [(w.request.id, w.request.name, [n.name for n in w.needs]) for w in self._waiting]
            bounds = {n.name: bound(n) for w in self._waiting for n in w.needs}
            waits = summary((w.request.name, w.wait, w.since) for w in self._waiting)
        return {
            "owner": self.owner,
            "held": held,
            "waiting": waiting,
            "bounds": bounds,  # semaphore -> requests next in line at most (the rest are surplus)
            "peers": len(self.placement.peers()),  # live workers with a gate that this one sees
            "waits": waits,  # per task and reason: count, oldest wait (see taskpool.worker.waits)
            "wait_seconds": self.wait_times.snapshot(),
            **self.stats,
        }

    def close(self) -> None:
        """Stop waiting and renewing; give back every slot this worker still holds."""
        self._stopping.set()
        self._wake.set()
        self.holdings.stop()
        with self._lock:
            waiting = [w.request for w in self._waiting]
        for request in waiting:
            self.holdings.leave(state.admission_key(request))
        self.holdings.flush_abandoned()
        for key in self.holdings.delivery_keys():
            self.release(key)
        if self.board is not None:
            try:
                self.board.withdraw()
            except redis.RedisError:
                logger.debug("taskpool: could not withdraw this worker's record; it expires", exc_info=True)
