"""Delivery leases' consumer bootstep: a live worker's unacked messages stay its own however long
they take; a dead worker's come back within the lease ttl, exactly once.

The Redis side (the owners hash, the Lua scripts, why each) is :mod:`taskpool.stores.deliveries`.
Here, in the worker's main process:

- :class:`DeliveryHooks` is called by the task channel's QoS (kombu's Redis ack emulation with
  hooks, :func:`taskpool.compat.kombu.install_qos_hooks`): a delivery records its owner in the
  same pipeline as kombu's own writes; an ack removes it only while it is this worker's; a
  requeue (a prefork child died, ``task_reject_on_worker_lost``) puts the message at the *head*
  of its queue, where kombu would put it at the tail, behind the whole backlog.
- :class:`DeliveryKeeper`, one daemon thread, vouches for every delivery the worker holds
  (reserved, running, held by the admission gate or a batcher, waiting for its ETA or
  countdown) every ``min(lease_ttl, visibility_timeout) / 3`` seconds, and sweeps for the
  deliveries of workers that stopped vouching: claimed atomically, restored with kombu's
  ``restore_by_tag``. A sweep waits until this worker has reached Redis for a whole refresh
  period, so a Redis restart does not make every live worker look dead.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from typing import Any

import redis
from celery import bootsteps

from taskpool.compat.celery import before_connection_loss, requests_in_pool
from taskpool.compat.kombu import install_qos_hooks, restore_held, unacked_keys
from taskpool.core.names import queue_keyprefix
from taskpool.stores.deliveries import DeliveryLeases
from taskpool.worker import state

__all__ = ["DeliveryHooks", "DeliveryKeeper", "DeliveryStep"]

logger = logging.getLogger("taskpool.delivery")

#: Seconds between retries while Redis cannot be reached (well within any ttl).
RETRY_EVERY = 1.0
#: Tags one sweep claims at most (the next sweep takes the rest).
CLAIM_LIMIT = 500


def sweep_period(ttl: float) -> float:
    """Seconds between two sweeps: a dead worker's messages are back within ttl + this."""
    return min(2.0, max(0.25, ttl / 6))


class DeliveryHooks:
    """What the task channel's QoS calls on each change of a delivery; knows what this worker holds."""

    def __init__(self, leases: DeliveryLeases) -> None:
        self.leases = leases
        self._held: dict[str, None] = {}
        #: Acked while Redis could not be reached: still held (vouched for) until the ack is sent.
        self._unsent_acks: dict[str, None] = {}
        self._lock = threading.Lock()

    def held(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def drop(self, tags: list[str]) -> None:
        with self._lock:
            for tag in tags:
                self._held.pop(tag, None)

    # -- called by the channel's QoS -----------------------------------------------------------
    def appended(self, pipe: Any, tag: str) -> None:
        pipe.hset(self.leases.owners_name, tag, self.leases.owner)  # kombu's pipeline adds its prefix
        with self._lock:
            self._held[tag] = None

    def ack(self, tag: str) -> None:
        try:
            acked = self.leases.ack(tag)
        except redis.RedisError as exc:
            # Redis is down (its task ended during an outage): the delivery stays held, so the
            # keeper keeps vouching for it and no worker restores it, and the keeper acks it when
            # Redis is back (retry_acks). Dropping it here made the task run again a ttl later.
            with self._lock:
                self._unsent_acks[tag] = None
            logger.warning("taskpool: message %s will be acknowledged when Redis is back: %s", tag, exc)
            return
        self._acked(tag, acked)

    def _acked(self, tag: str, acked: bool) -> None:
        self.drop([tag])
        with self._lock:
            self._unsent_acks.pop(tag, None)
        if not acked:
            logger.warning(
                "taskpool: message %s acknowledged after another worker took it over (this worker "
                "was presumed dead for a whole lease ttl): its task may have run twice",
                tag,
            )

    def unsent_acks(self) -> list[str]:
        with self._lock:
            return list(self._unsent_acks)

    def retry_acks(self) -> int:
        """Acknowledge the deliveries whose ack met a Redis error; raises ``redis.RedisError``."""
        tags = self.unsent_acks()
        for tag in tags:
            self._acked(tag, self.leases.ack(tag))
        return len(tags)

    def requeue(self, qos: Any, tag: str) -> None:
        self.drop([tag])
        holder = self.leases.holder(tag)
        if holder is not None and holder != self.leases.owner:
            logger.warning("taskpool: message %s not requeued: worker %s holds it now", tag, holder)
            return
        qos.restore_by_tag(tag, leftmost=False)  # the head of its queue: BRPOP reads from the right

    def restored(self, tag: str) -> None:
        self.drop([tag])
        self.leases.forget(tag)

    def still_mine(self, tag: str) -> bool:
        """Whether ``tag`` is still this worker's delivery (its owner record names this worker),
        so it may be restored after a reconnect; one that is not is forgotten here. kombu restored
        it when the channel closed (Redis was up): it may be delivered again, with the same tag,
        to another worker. Raises ``redis.RedisError``."""
        if self.leases.holder(tag) == self.leases.owner:
            return True
        self.drop([tag])
        return False


class DeliveryKeeper:
    """The thread that renews this worker's delivery leases and restores those of dead workers."""

    def __init__(self, hooks: DeliveryHooks, *, ttl: float, visibility_timeout: float) -> None:
        self.hooks = hooks
        self.ttl = ttl
        self.refresh_every = min(ttl, visibility_timeout) / 3
        self.sweep_every = sweep_period(ttl)
        #: The task channel whose QoS restores claimed messages (replaced at each reconnect).
        self.channel: Any = None
        self.restored = 0
        self._connected_since: float | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="taskpool-delivery-keeper", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            thread.join(timeout)

    def refresh(self) -> None:
        """Vouch for every delivery held now; forget the ones that are not this worker's any more."""
        gone = self.hooks.leases.refresh(self.hooks.held())
        self.hooks.drop(list(gone))
        taken = {tag: holder for tag, holder in gone.items() if holder is not None}
        if taken:
            logger.error(
                "taskpool: %d message(s) held by this worker were restored by another worker "
                "(this worker did not renew its delivery leases for %g s): their tasks may run twice: %s",
                len(taken),
                self.ttl,
                ", ".join(sorted(taken)),
            )

    def sweep(self) -> int:
        """Restore the messages of workers whose leases expired; returns how many."""
        channel = self.channel
        if channel is None:
            return 0
        claimed = self.hooks.leases.claim(self.ttl, CLAIM_LIMIT)
        restored = 0
        for tag, owner in reversed(claimed):  # each goes to the head: the oldest ends up first
            try:
                channel.qos.restore_by_tag(tag)
                restored += 1
            except Exception:
                logger.exception("taskpool: could not restore message %s of dead worker %s", tag, owner)
        if claimed:
            owners = sorted({owner for _, owner in claimed})
            logger.warning(
                "taskpool: restored %d message(s) of worker(s) whose delivery lease expired: %s",
                restored,
                ", ".join(owners),
            )
        self.restored += restored
        return restored

    def _run(self) -> None:
        next_refresh = next_sweep = time.monotonic()
        while not self._stopping.is_set():
            now = time.monotonic()
            try:
                if now >= next_refresh:
                    if self.hooks.unsent_acks():
                        self.hooks.retry_acks()
                    self.refresh()
                    next_refresh = now + self.refresh_every
                    if self._connected_since is None:
                        self._connected_since = now
                connected = self._connected_since is not None and now - self._connected_since >= min(
                    self.refresh_every, self.ttl / 3
                )
                if now >= next_sweep and connected:
                    self.sweep()
                    next_sweep = now + self.sweep_every
            except redis.RedisError as exc:
                logger.warning("taskpool: delivery leases: Redis error, retry in %g s: %s", RETRY_EVERY, exc)
                self._connected_since = None
                next_refresh = now + RETRY_EVERY  # not sooner: no busy loop while Redis is down
            except Exception:  # never let the keeper die silently
                logger.exception("taskpool: delivery keeper pass failed")
                next_refresh = now + RETRY_EVERY
            wait = min(next_refresh, next_sweep if self._connected_since is not None else next_refresh)
            self._stopping.wait(max(0.01, min(wait - time.monotonic(), RETRY_EVERY)))


class DeliveryStep(bootsteps.StartStopStep):
    """Consumer bootstep: owns the delivery keeper (``consumer.taskpool_deliveries``).

    ``start`` (each connection) gives the new task channel the hooked QoS before its first
    delivery and points the keeper at it; ``shutdown`` stops the keeper (the messages still held
    are put back by kombu when the channel closes).
    """

    label = "taskpool delivery leases"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        state.set_deliveries(parent, None)
        #: Delivery tags to put back on their queues at the next reconnect (see connection_lost).
        self._to_restore: list[str] = []
        before_connection_loss(
            parent,
            "deliveries",
            lambda: self.connection_lost(parent),
            "delivery leases: could not list held messages",
        )

    def connection_lost(self, c: Any) -> None:
        """At a connection loss, before Celery's ``on_close`` forgets the requests it holds (ETA and
        countdown timers cancelled, reserved requests dropped): list the held deliveries that no
        pool is running nor will run, to put them back on their queues after the reconnect. Left
        held, they stayed this worker's (vouched for by the keeper, restored by no one): lost.
        kombu's own restore when the channel closes fails while Redis is down."""
        keeper = state.deliveries_of(c)
        if keeper is None:
            return
        busy = set(keeper.hooks.unsent_acks()) | set(requests_in_pool())
        dropped = [tag for tag in keeper.hooks.held() if tag not in busy]
        self._to_restore += [tag for tag in dropped if tag not in self._to_restore]
        if dropped:
            logger.info("taskpool: %d held message(s) go back on the queue at the reconnect", len(dropped))

    def start(self, c: Any) -> None:
        keeper = state.deliveries_of(c)
        if keeper is None:
            channel = getattr(getattr(c, "task_consumer", None), "channel", None)
            if channel is None or not hasattr(channel, "unacked_key"):
                return  # not kombu's Redis transport: nothing to lease
            app = c.app
            owner = f"{c.hostname}/{os.getpid()}/{secrets.token_hex(3)}"
            leases = DeliveryLeases(
                app.broker_redis,  # kombu's unacked keys: the broker's Redis, never the state's
                keyspace=app.settings.keyspace,
                owner=owner,
                keyprefix=queue_keyprefix(app.conf.broker_transport_options),
                unacked=unacked_keys(channel),
            )
            keeper = DeliveryKeeper(
                DeliveryHooks(leases),
                ttl=app.settings.lease_ttl,
                visibility_timeout=app.settings.visibility_timeout,
            )
            state.set_deliveries(c, keeper)
        keeper.channel = install_qos_hooks(c, keeper.hooks)
        if keeper.channel is not None:
            keeper.start()
            tags, self._to_restore = self._to_restore, []
            _restored, failed = restore_held(keeper.channel.qos, tags, keeper.hooks)
            for tag, exc in failed:
                logger.error("taskpool: could not put message %s back after reconnecting", tag, exc_info=exc)
                self._to_restore.append(tag)

    def info(self, c: Any) -> dict[str, Any]:
        keeper = state.deliveries_of(c)
        if keeper is None:
            return {}
        return {
            "taskpool_deliveries": {
                "owner": keeper.hooks.leases.owner,
                "held": len(keeper.hooks.held()),
                "restored": keeper.restored,
            }
        }

    def shutdown(self, c: Any) -> None:
        keeper = state.deliveries_of(c)
        if keeper is not None:
            keeper.stop()
