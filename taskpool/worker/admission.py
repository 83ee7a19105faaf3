"""The admission gate: a request enters the pool only when its limits are granted.

Like Celery's own ``rate_limit``, the worker's main process holds a request that must wait
and hands it to the pool when its slots are granted, so a waiting request never sits in a
pool slot and other tasks on the worker keep running. The main process owns the leases,
renews them on one thread (:class:`~taskpool.semaphores.LeaseKeeper`) and releases them when
the request ends: success, failure, retry, revoke, or a killed child (``WorkerLostError``).

How it plugs into Celery (public hooks only): tasks with limits get the task attribute
``Strategy`` pointing at :func:`strategy`, which builds Celery's default strategy over a view
of the consumer whose ``on_task_request`` / ``apply_eta_task`` go through the gate and whose
``pool.apply_async`` wraps the completion callbacks to release the leases first.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from typing import Any

import redis
from celery import bootsteps
from celery.worker.state import task_reserved

from taskpool.compat.kombu import close_task_channel, restore_messages
from taskpool.core.errors import ConfigurationError
from taskpool.core.limits import Need, gpu_count, needs_of
from taskpool.core.names import GPU, kind_of
from taskpool.core.options import TaskOptions
from taskpool.stores.limits import LimitStore
from taskpool.stores.semaphores import Lease, LeaseKeeper, Semaphore
from taskpool.worker.batching import batchers_of, members_of

logger = logging.getLogger("taskpool.admission")

#: Seconds a limit's size is cached by a worker (``taskpool limits set`` takes effect after it).
LIMIT_SIZE_TTL = 2.0


class _View:
    """A consumer (or pool) with some attributes replaced; everything else is the original's."""

    def __init__(self, target: Any, **overrides: Any) -> None:
        self._target = target
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class _Waiting:
    __slots__ = ("needs", "request", "since")

    def __init__(self, request: Any, needs: list[Need]) -> None:
        self.request = request
        self.needs = needs
        self.since = time.monotonic()


def _key_of(request: Any) -> str:
    """The admission key of one delivery of a request.

    Leases are kept per delivery, not per task id: a message redelivered while its first
    delivery still runs (restored at a reconnect, or past the visibility timeout) carries the
    same task id, and each delivery must release only its own leases.
    """
    key: str | None = getattr(request, "taskpool_key", None)
    if key is None:
        key = request.taskpool_key = f"{request.id}#{next(_keys)}"
    return key


_keys = itertools.count(1)


class Gate:
    """Admission for one worker process (its consumer).

    Args:
        app: the TaskPool app.
        consumer: Celery's consumer of this worker.
        client: Redis client (shared, thread-safe pool).
        ttl: lease length, seconds; renewed every ttl/3.
    """

    def __init__(self, app: Any, consumer: Any, client: redis.Redis, ttl: float) -> None:
        self.app = app
        self.consumer = consumer
        self.client = client
        self.ttl = ttl
        self.node = consumer.hostname
        self.owner = f"{consumer.hostname}:{os.getpid()}"
        self.limits = LimitStore(client, app.settings.keyspace)
        # Pool processes free a lease when the task function returns (release_in_pool), before
        # this process hears of it: a renewal that finds it gone then is no loss.
        self.keeper = LeaseKeeper(on_lost=self._lost, grace=min(5.0, ttl / 3)).start()
        self._gpus: int | None = None
        self._sizes: dict[str, int | None] = {}
        self._sizes_at = 0.0
        self._semaphores: dict[str, Semaphore] = {}
        self._held: dict[str, list[tuple[Semaphore, Lease]]] = {}  # admission key -> leases
        self._waiting: deque[_Waiting] = deque()
        # Granted by the waiter thread, handed to the event loop, not yet dispatched.
        self._handing: dict[str, Any] = {}
        # Delivery tags of held requests dropped at a connection loss: restored at reconnect.
        self._to_restore: list[str] = []
        self._round = threading.Lock()  # one admission round at a time (waiter thread or event loop)
        self._admit_pending = False  # an admission round is scheduled on the event loop
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._hub = getattr(consumer, "hub", None)
        self._loop_thread = threading.get_ident()  # built by the consumer, on its event loop's thread
        self._held_extra = 0  # prefetch slots lent to waiting requests
        self.max_waiting_extra = max(16, 4 * int(getattr(consumer.pool, "num_processes", 1) or 1))
        self.stats = {"admitted": 0, "waited": 0, "released": 0, "failed_admission": 0, "lost_leases": 0}
        self._waiter = threading.Thread(target=self._wait_loop, name="taskpool-admission", daemon=True)
        self._waiter.start()

    # -- Celery glue -------------------------------------------------------------------
    def view(self) -> _View:
        """The consumer as the strategy should see it."""
        c = self.consumer
        pool = _View(c.pool, apply_async=self._pool_apply_async(c.pool.apply_async))
        return _View(c, on_task_request=self.admit, apply_eta_task=self._apply_eta_task, pool=pool)

    def _apply_eta_task(self, request: Any) -> None:
        task_reserved(request)
        self.admit(request)
        self.consumer.qos.decrement_eventually()

    def _pool_apply_async(self, apply_async: Any) -> Any:
        def wrapped(target: Any, *, callback: Any = None, error_callback: Any = None, **kwargs: Any) -> Any:
            # Celery passes the request's own bound methods (on_success, on_failure) as callbacks.
            request = getattr(callback, "__self__", None) or getattr(error_callback, "__self__", None)
            key = getattr(request, "taskpool_key", None) or self._key_of_task(kwargs.get("correlation_id"))

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
    def needs(self, options: TaskOptions) -> list[Need]:
        if self._gpus is None and options.gpu_slots:
            self._gpus = gpu_count()
        names = [n for n in options.limits]
        if names and (
            time.monotonic() - self._sizes_at > LIMIT_SIZE_TTL or not set(names) <= set(self._sizes)
        ):
            from taskpool.core.limits import expand_limit_name

            expanded = [expand_limit_name(n) for n in names]
            self._sizes.update(self.limits.get_many(expanded))
            self._sizes_at = time.monotonic()
        return needs_of(options, node=self.node, limit_sizes=self._sizes, gpus=self._gpus or 0)

    def semaphore(self, need: Need) -> Semaphore:
        sem = self._semaphores.get(need.name)
        if sem is None:
            sem = self._semaphores[need.name] = Semaphore(
                self.client, need.name, need.capacity, self.ttl, keyspace=self.app.settings.keyspace
            )
        elif sem.capacity != need.capacity:
            sem.set_capacity(need.capacity)
        return sem

    def admit(self, request: Any) -> None:
        """Dispatch ``request`` now if its slots are free, else hold it until they are."""
        options: TaskOptions | None = getattr(request.task, "taskpool", None)
        if options is None:
            self.consumer.on_task_request(request)
            return
        try:
            needs = self.needs(options)
        except ConfigurationError as exc:
            self._refuse(request, exc)
            return
        with self._lock:
            blocked = any(w for w in self._waiting if {n.name for n in w.needs} & {n.name for n in needs})
        if not blocked and self._try(request, needs):
            self._dispatch(request)
            return
        with self._lock:
            self._waiting.append(_Waiting(request, needs))
            if self._held_extra < self.max_waiting_extra:
                # Let the worker fetch other work while this one waits (like an ETA task).
                self._held_extra += 1
                request.taskpool_lent_prefetch = True
                self.consumer.qos.increment_eventually()
        self.stats["waited"] += 1
        self._wake.set()

    def _try(self, request: Any, needs: list[Need]) -> bool:
        """Take every need or none (no hold-and-wait: partial grants are given back)."""
        got: list[tuple[Semaphore, Lease]] = []
        for need in needs:
            sem = self.semaphore(need)
            lease = sem.try_acquire(self.owner, need.count, task_id=request.id)
            if lease is None:
                for s, lease_ in got:
                    s.release(lease_)
                return False
            got.append((sem, lease))
        for sem, lease in got:
            self.keeper.add(sem, lease)
        gpus = [slot for sem, lease in got if kind_of(sem.name)[0] == GPU for slot in lease.slots]
        if gpus:
            # Travels with the request to the pool child: task.request.taskpool_gpus.
            request.request_dict["taskpool_gpus"] = gpus
        # So the pool process frees the slots as soon as the task function returns.
        request.request_dict["taskpool_leases"] = [
            [sem.name, sem.capacity, lease.token] for sem, lease in got
        ]
        with self._lock:
            self._held[_key_of(request)] = got
        return True

    def _key_of_task(self, task_id: str | None) -> str | None:
        """The admission key of the one held delivery of ``task_id`` (``None`` if not just one)."""
        if task_id is None:
            return None
        with self._lock:
            keys = [k for k in self._held if k.rpartition("#")[0] == task_id]
        return keys[0] if len(keys) == 1 else None

    def _dispatch(self, request: Any) -> None:
        self.stats["admitted"] += 1
        if getattr(request, "taskpool_lent_prefetch", False):
            request.taskpool_lent_prefetch = False
            with self._lock:
                self._held_extra -= 1
            self.consumer.qos.decrement_eventually()
        if request.revoked():
            self.release(_key_of(request))
            return
        try:
            self.consumer.on_task_request(request)
        except Exception:
            self.release(_key_of(request))
            raise

    def _dispatch_handed(self, key: str) -> None:
        """Dispatch a request the waiter thread granted, unless a connection loss dropped it."""
        with self._lock:
            request = self._handing.pop(key, None)
        if request is not None:
            self._dispatch(request)

    def _refuse(self, request: Any, exc: ConfigurationError) -> None:
        """A request that can never be admitted fails now, with a dead letter to retry it later."""
        batch = getattr(request, "members", None)
        if batch is not None:  # a batch: each input fails on its own
            for member in batch:
                self._refuse(member, exc)
                request.batcher.done(member)
            return
        self.stats["failed_admission"] += 1
        logger.error("taskpool: %s[%s] refused: %s", request.name, request.id, exc)
        from celery.utils.serialization import get_pickleable_exception

        from taskpool.stores.dead_letters import DeadLetter

        try:
            self.app.dead_letters.add(
                DeadLetter.for_exception(
                    exc,
                    task=request.name,
                    task_id=request.id,
                    args=request.args,
                    kwargs=request.kwargs,
                    attempts=0,
                    chain=list(request.request_dict.get("chain") or []),
                )
            )
        finally:
            request.task.backend.mark_as_failure(
                request.id, get_pickleable_exception(exc), request=request._context
            )
            request.acknowledge()

    def release(self, key: str | None, *, admit: bool = True) -> None:
        """Give back the leases of one admitted delivery (its :func:`_key_of`).

        With ``admit``, waiters are then admitted on the event loop's next turn.
        """
        if key is None:
            return
        with self._lock:
            held = self._held.pop(key, None)
        if not held:
            return
        for sem, lease in held:
            self.keeper.remove(lease)
            try:
                sem.release(lease, missing_ok=True)  # the pool process may have released it first
            except redis.RedisError:
                logger.exception("taskpool: could not release %s; it frees itself at lease expiry", sem.name)
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
                names = {n.name for n in w.needs}
                if names & taken:
                    continue
                if not self._try(w.request, w.needs):
                    taken |= names
                    continue
                key = _key_of(w.request)
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

    # -- the waiter thread -------------------------------------------------------------
    def _wait_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                waiting = list(self._waiting)
            if not waiting:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
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
            wake_keys = sorted({self.semaphore(n).keys.wake for w in waiting for n in w.needs})
            try:
                self.client.blpop(wake_keys, timeout=0.5)
            except redis.RedisError:
                time.sleep(0.5)

    def _hand_back(self, key: str) -> None:
        """Run the dispatch on the consumer's own thread (its event loop), where Celery expects it."""
        if self._hub is not None:
            self._hub.call_soon(self._dispatch_handed, key)
        else:
            self._dispatch_handed(key)

    # -- connection loss -----------------------------------------------------------------
    def connection_lost(self) -> int:
        """Forget every request not yet dispatched; returns how many.

        Their messages were delivered on the channel that just closed: they can no longer be
        acked there, and Celery itself drops its reserved requests at this point (``on_close``).
        They never ran, so their leases (if any were granted) are given back now, and their
        messages are put back on the queue at reconnect (:meth:`reconnected`), or by the
        broker's own redelivery where that is not possible. Requests already in the pool keep
        their leases until they finish, so the limits hold across the reconnect.
        """
        with self._lock:
            dropped = [w.request for w in self._waiting] + list(self._handing.values())
            self._waiting.clear()
            self._handing.clear()
            self._held_extra = 0  # lent on the old channel's QoS; the new connection has its own
        for request in dropped:
            self.release(_key_of(request))
            for member in members_of(request):  # a batch's inputs, or the request itself
                tag = getattr(getattr(member, "message", None), "delivery_tag", None)
                if tag is not None:
                    self._to_restore.append(tag)
        if dropped:
            self.stats["dropped_at_reconnect"] = self.stats.get("dropped_at_reconnect", 0) + len(dropped)
            logger.warning(
                "taskpool: consumer restarting or stopping: "
                "%d request(s) waiting for limits go back to the queue",
                len(dropped),
            )
        return len(dropped)

    def reconnected(self, consumer: Any) -> int:
        """Put the messages of the requests dropped at the connection loss back on their queue.

        kombu's Redis transport restores unacked messages when the old channel closes, but
        after a Redis restart that happens while Redis is still down and fails, leaving them
        in the unacked hash until ``visibility_timeout`` (an hour by default). The new channel
        restores them by delivery tag; a tag kombu already restored is a no-op.
        """
        tags, self._to_restore = self._to_restore, []
        return restore_messages(consumer, tags)

    def waiting_count(self) -> int:
        """How many requests wait in the gate for their limits or GPU slots (autoscaler input)."""
        with self._lock:
            return len(self._waiting)

    def _lost(self, lease: Lease, exc: Exception) -> None:
        self.stats["lost_leases"] += 1
        logger.error("taskpool: task %s lost its lease on %s: %s", lease.task_id, lease.semaphore, exc)

    # -- status and shutdown ------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        with self._lock:
            held = {
                key.rpartition("#")[0]: [(s.name, list(lease.slots), lease.fence) for s, lease in v]
                for key, v in self._held.items()
            }
            waiting = [(w.request.id, w.request.name, [n.name for n in w.needs]) for w in self._waiting]
        return {"owner": self.owner, "held": held, "waiting": waiting, **self.stats}

    def close(self) -> None:
        """Stop waiting and renewing; give back every slot this worker still holds."""
        self._stopping.set()
        self._wake.set()
        self.keeper.stop()
        with self._lock:
            keys = list(self._held)
        for key in keys:
            self.release(key)


def strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Celery's default strategy, over a consumer view that admits requests through the gate."""
    from celery.worker.strategy import default

    gate = gate_of(consumer)
    return default(task, app, gate.view(), **kwargs)


def waiting_count_of(worker: Any) -> int:
    """Requests held by the admission gate of ``worker`` (a Celery ``WorkController``), 0 without one.

    They are in Celery's ``reserved_requests`` too (reserved, not yet in the pool).
    """
    gate: Gate | None = getattr(getattr(worker, "consumer", None), "taskpool_gate", None)
    return gate.waiting_count() if gate is not None else 0


def gate_of(consumer: Any) -> Gate:
    gate: Gate | None = getattr(consumer, "taskpool_gate", None)
    if gate is None:
        app = consumer.app
        gate = Gate(app, consumer, app.redis, app.settings.lease_ttl)
        consumer.taskpool_gate = gate
    return gate


class AdmissionStep(bootsteps.StartStopStep):
    """Consumer bootstep: the gate's life across connections, and its ``inspect stats``.

    - At a connection loss (the consumer's blueprint ``stop`` before it reconnects) the gate
      forgets the requests it holds and gives back their leases; at the reconnect (``start``)
      their messages go back on the queue. At shutdown it gives back every slot.
    - Wraps the consumer's ``on_connection_error_after_connected`` to close the task channel
      safely first (see :func:`close_task_channel`).
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)
    _batch_tags: list[str] = []  # delivery tags of batch inputs dropped at a connection loss

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        original = getattr(parent, "on_connection_error_after_connected", None)
        if original is not None and not getattr(original, "taskpool_wrapped", False):

            def on_connection_error_after_connected(exc: BaseException) -> Any:
                try:
                    close_task_channel(parent)
                except Exception:  # never make a connection loss worse
                    logger.exception("taskpool: could not close the task channel after a connection loss")
                return original(exc)

            on_connection_error_after_connected.taskpool_wrapped = True  # type: ignore[attr-defined]
            parent.on_connection_error_after_connected = on_connection_error_after_connected

    def start(self, c: Any) -> None:
        gate: Gate | None = getattr(c, "taskpool_gate", None)
        restored = gate.reconnected(c) if gate is not None else 0
        tags, self._batch_tags = self._batch_tags, []
        restored += restore_messages(c, tags)
        if restored:
            logger.info("taskpool: %d held message(s) put back on the queue after reconnecting", restored)

    def stop(self, c: Any) -> None:
        gate: Gate | None = getattr(c, "taskpool_gate", None)
        if gate is not None:
            gate.connection_lost()
        dropped = [r for b in batchers_of(c).values() for r in b.connection_lost()]
        self._batch_tags = [
            t for r in dropped if (t := getattr(getattr(r, "message", None), "delivery_tag", None))
        ]
        if dropped:
            logger.warning(
                "taskpool: consumer restarting or stopping: %d buffered batch input(s) go back to the queue",
                len(dropped),
            )

    def info(self, c: Any) -> dict[str, Any]:
        gate: Gate | None = getattr(c, "taskpool_gate", None)
        info: dict[str, Any] = {"taskpool_admission": gate.info()} if gate is not None else {}
        batchers = batchers_of(c)
        if batchers:
            info["taskpool_batches"] = {name: b.info() for name, b in batchers.items()}
        return info

    def shutdown(self, c: Any) -> None:
        gate: Gate | None = getattr(c, "taskpool_gate", None)
        if gate is not None:
            gate.close()
