"""kombu internals taskpool relies on, in one place (read from kombu 5.7.0's Redis transport,
kombu/transport/redis.py and kombu/transport/virtual/base.py, as installed).

Each function names the private attribute it uses; tests/integration/test_compat_internals.py
checks each still has the shape read here and fails naming the function to update. This module
imports nothing of taskpool.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from queue import Empty
from typing import Any

logger = logging.getLogger("taskpool.admission")


def restore_held(qos: Any, tags: list[str], hooks: Any = None) -> tuple[int, list[tuple[str, Exception]]]:
    """Put back on their queues, by delivery tag, messages this worker held when its connection
    was lost (each goes to the head of its queue; their order is kept).

    A restored message keeps its delivery tag. kombu restores a closing channel's unacked
    messages itself when Redis is up, and another worker may then have taken one, under the same
    tag: restoring that tag now would push a second copy of a message another worker runs. So,
    with taskpool's delivery leases (``hooks``, :class:`taskpool.worker.delivery.DeliveryHooks`;
    by default the ones on ``qos``), a tag is restored only while ``hooks.still_mine(tag)`` (its
    owner record in Redis names this worker; a tag that is not is forgotten by the hooks). Without
    them every tag is restored (kombu pushes only what is still in the unacked hash).

    Internal (kombu 5.7.0): the Redis transport's ``QoS.restore_by_tag(tag)``. When ``qos`` is not
    the hooked one (the leases' step has not hooked the new channel yet), ``hooks.restored(tag)``
    is called after each restore, as the hooked QoS does.

    Returns:
        How many were restored, and the tags that failed with their error (e.g. Redis still
        down), in the order of ``tags``.
    """
    restore = getattr(qos, "restore_by_tag", None)
    if not tags or restore is None:
        return 0, []  # nothing to do, or a broker that redelivers by itself (AMQP)
    own_hooks = getattr(qos, "taskpool_hooks", None)
    hooks = own_hooks if hooks is None else hooks
    restored = 0
    failed: list[tuple[str, Exception]] = []
    for tag in reversed(tags):  # each goes to the head of its queue: keep their order
        try:
            if hooks is not None and not hooks.still_mine(tag):
                continue  # another worker's delivery now, under the same tag: leave it be
            restore(tag)
            if hooks is not None and hooks is not own_hooks:
                hooks.restored(tag)
            restored += 1
        except Exception as exc:
            failed.append((tag, exc))
    return restored, failed[::-1]


def restore_messages(consumer: Any, tags: list[str], hooks: Any = None) -> int:
    """Put messages delivered on a closed channel back on their queues, by delivery tag
    (:func:`restore_held` on the consumer's new task channel; ``hooks``: the delivery leases').

    kombu's Redis transport restores unacked messages when the old channel closes, but after
    a Redis restart that happens while Redis is still down and fails, leaving them in the
    unacked hash until ``visibility_timeout``. A tag kombu already restored is a no-op, and
    one another worker holds now is left alone.

    Internal: Celery's ``consumer.task_consumer.channel.qos``. A tag that fails is logged and
    left to the visibility timeout (or to the delivery leases' own restore, which retries).
    """
    channel = getattr(getattr(consumer, "task_consumer", None), "channel", None)
    restored, failed = restore_held(getattr(channel, "qos", None), tags, hooks)
    for tag, exc in failed:
        logger.error(
            "taskpool: could not restore message %s; it returns after the visibility timeout",
            tag,
            exc_info=exc,
        )
    return restored


def requeue_at_head(message: Any) -> bool:
    """Put a delivered, unacknowledged message back at the head of its queue, as it is, and
    forget it on this channel: the next BRPOP of any consumer of the queue takes it first.

    kombu's own ``Message.requeue()`` is no use here: the Redis ``QoS.reject(tag, requeue=True)``
    restores with ``leftmost=True``, an LPUSH, and consumers BRPOP from the right, so the message
    goes behind the whole backlog.

    The message keeps its body, headers and retry count; kombu marks it ``redelivered`` (Celery
    reads that flag only for ``worker_deduplicate_successful_tasks``, which looks the task up in
    the result backend: one never run is run). Nothing is duplicated or lost: the unacked entry is
    removed and pushed back in one transaction, and an entry kombu restored already (visibility
    timeout) is pushed nowhere.

    With taskpool's delivery leases on the channel (:func:`install_qos_hooks`), the hooked
    ``QoS.reject(tag, requeue=True)`` does it: the hooks' ``requeue`` restores at the head unless
    another worker holds the delivery now (this one was presumed dead), forgets the tag's owner,
    and the window forgets the tag.

    Internals (kombu 5.7.0, the Redis transport): ``QoS.restore_by_tag(tag, leftmost=False)``
    (WATCH/MULTI on the unacked hash: HGET, ZREM/HDEL, RPUSH to the queue's list for the
    message's priority), reached through ``message.channel.qos``; then the virtual transport's
    base ``QoS.ack(tag)`` (only the channel's prefetch window forgets the tag, no Redis: what
    ``QoS.reject`` calls after its own restore); then the message's ``_state = "REQUEUED"``, what
    ``Message.requeue()`` sets, so a later ack or reject of this message raises instead of
    touching a delivery that is no longer this channel's.

    Returns:
        False, and nothing done, when the message is not an unacknowledged delivery of kombu's
        Redis transport.

    Raises:
        The transport's connection errors: the message is then still this channel's, unacked.
    """
    from kombu.transport.virtual.base import QoS as VirtualQoS

    channel = getattr(message, "channel", None)
    qos = getattr(channel, "qos", None)
    restore = getattr(qos, "restore_by_tag", None)
    tag = getattr(message, "delivery_tag", None)
    if restore is None or tag is None or not isinstance(qos, VirtualQoS) or message.acknowledged:
        return False
    if getattr(qos, "taskpool_hooks", None) is not None:
        qos.reject(tag, requeue=True)  # the hooked QoS: at the head, and only while it is ours
    else:
        restore(tag, leftmost=False)
        VirtualQoS.ack(qos, tag)
    message._state = "REQUEUED"
    return True


def window_has_room(consumer: Any) -> bool:
    """Whether the consumer's task channel may take one more message now: its prefetch window
    (unacked deliveries against ``prefetch_count``) is not full, so it is polling its queues.

    Internal (kombu 5.7.0): the virtual transport's ``QoS.can_consume()`` on
    ``consumer.task_consumer.channel.qos`` (what kombu asks before each BRPOP). Read from
    another thread it is a hint: two ``len()`` of the channel's own sets.

    Returns:
        True when the consumer has no such channel (the window is then not ours to judge).
    """
    qos = getattr(getattr(getattr(consumer, "task_consumer", None), "channel", None), "qos", None)
    can_consume = getattr(qos, "can_consume", None)
    return bool(can_consume()) if callable(can_consume) else True


#: Seconds the broker sockets may block while a lost connection is torn down (Celery's own bound).
CLOSE_SOCKET_TIMEOUT = 5.0


def close_task_channel(consumer: Any) -> None:
    """Close the consumer's task channel after a connection loss, before Celery tears it down.

    Works around a kombu 5.7 Redis transport crash that kills the worker on a broker restart
    whenever unacked messages sit in the channel while a BRPOP is in flight (held requests of
    the gate, or fewer acks_late tasks running than the prefetch window allows):

    1. Celery's ``on_connection_error_after_connected`` first calls ``connection.collect()``,
       which closes the channel; ``redis.Channel.close`` reads the outstanding BRPOP reply
       first, that read raises ``ConnectionError``, and the close stops before the channel is
       marked closed (the error is swallowed by ``maybe_close_channel``).
    2. ``collect()`` then clears the transport's ``client`` (``_do_close_transport``).
    3. ``connection.close()`` closes the channel again; the poll is over now, so it goes on to
       restore the unacked messages, which needs a new client pool, whose parameters come from
       ``transport.client``, now ``None``: ``AttributeError`` in ``_connparams``, which is not
       a connection error, so the consumer dies with "Unrecoverable error".

    Closing the channel here, retrying once when the first attempt fails on the outstanding
    poll, completes the close while the transport is intact; later closes are no-ops. The
    restore of unacked messages may still fail while Redis is down (then the messages wait in
    the unacked hash, as in plain Celery); the gate restores its own at reconnect.

    Internals (kombu 5.7.0, Celery 5.7.0): the Redis ``Channel.close()`` and its ``closed``
    flag, reached through ``consumer.task_consumer.channel``; Celery's
    ``celery.utils.threads.bound_open_broker_sockets`` and ``default_socket_timeout``.
    """
    from celery.utils.threads import bound_open_broker_sockets, default_socket_timeout

    connection = getattr(consumer, "connection", None)
    channel = getattr(getattr(consumer, "task_consumer", None), "channel", None)
    if connection is None or channel is None or getattr(channel, "closed", True):
        return
    errors = tuple(connection.connection_errors) + tuple(connection.channel_errors)
    try:
        bound_open_broker_sockets(connection, CLOSE_SOCKET_TIMEOUT)
    except Exception:  # only a bound on blocking reads; go on without it
        logger.debug("taskpool: could not bound the broker sockets", exc_info=True)
    with default_socket_timeout(CLOSE_SOCKET_TIMEOUT):
        for _attempt in range(2):
            try:
                channel.close()
                return
            except errors as exc:
                if getattr(channel, "closed", False):
                    # Closed; only the restore of unacked messages failed (Redis is down).
                    logger.info("taskpool: unacked messages not restored at connection loss: %r", exc)
                    return


def forget_delivery(channel: Any, item: bytes) -> None:
    """Drop a refused queue entry from kombu's unacked hash, if kombu got as far as putting it
    there (it fails after that on some envelopes, e.g. headers that are a list).

    Internals (kombu 5.7.0): the Redis transport's envelope keeps the delivery tag at
    ``properties.delivery_tag``; ``QoS.ack(tag)`` removes the tag from the unacked hash and its
    index.
    """
    try:
        tag = json.loads(item)["properties"]["delivery_tag"]
    except Exception:
        return  # kombu never got a delivery tag out of it: it is not in the unacked hash
    try:
        channel.qos.ack(tag)
    except Exception:
        logger.debug("taskpool: could not ack refused delivery %s", tag, exc_info=True)


def guard_brpop_reader(
    consumer: Any,
    on_bad_entry: Callable[[str, bytes, BaseException], None],
    passthrough: Callable[[Any], tuple[type[BaseException], ...]],
) -> bool:
    """Wrap the task channel's BRPOP reader: a queue entry kombu fails to read is handed to
    ``on_bad_entry(queue, entry, error)``, dropped from the unacked hash (:func:`forget_delivery`)
    and counts as read; the consumer goes on.

    The entry was popped from its list and never entered the unacked hash (or is dropped from
    it), so dropping it is its acknowledgement. Errors in ``passthrough(channel)`` (the broker
    went away) and ``Empty`` pass through, as does an error with no entry read (Celery decides,
    as before). Nothing is parsed twice on the happy path.

    Internals of kombu 5.7.0's Redis ``Channel``: ``handlers["BRPOP"]`` (``_brpop_read``, which
    the ``MultiChannelPoller`` calls with ``**options``), ``client.parse_response(connection,
    command, **options)`` (wrapped on the instance to remember the raw reply, ``(queue key,
    entry)``), and ``sep`` (``"\\x06\\x16"``, between a queue's name and its priority in a key).

    Returns:
        False when the channel is not kombu's Redis channel, or is guarded already.
    """
    channel: Any = getattr(getattr(consumer, "task_consumer", None), "channel", None)
    handlers: Any = getattr(channel, "handlers", None)
    read = handlers.get("BRPOP") if isinstance(handlers, dict) else None
    if channel is None or read is None or getattr(read, "taskpool_wrapped", False):
        return False
    client = channel.client
    parse_response = client.parse_response
    separator = getattr(channel, "sep", "\x06\x16")
    last: list[Any] = [None]
    errors: tuple[type[BaseException], ...] = (Empty, *passthrough(channel))

    def remember(connection: Any, command: str, **options: Any) -> Any:
        reply = parse_response(connection, command, **options)
        if command == "BRPOP":
            last[0] = reply
        return reply

    def guarded_read(**options: Any) -> Any:
        last[0] = None
        try:
            return read(**options)
        except errors:
            raise
        except Exception as exc:
            reply, last[0] = last[0], None
            if not reply:
                raise  # not about an entry it read: Celery decides, as before
            key, item = reply
            text = key if isinstance(key, str) else bytes(key).decode("utf-8", "backslashreplace")
            on_bad_entry(text.rsplit(separator, 1)[0], item, exc)
            forget_delivery(channel, item)
            return True

    guarded_read.taskpool_wrapped = True  # type: ignore[attr-defined]
    client.parse_response = remember
    handlers["BRPOP"] = guarded_read
    return True


def shorten_polls_without_credit(consumer: Any, poll: float) -> bool:
    """While the task channel's prefetch window is full, the consumer's polls of the broker
    wait at most ``poll`` seconds (Celery's ``synloop`` asks for 2 s); with credit they are
    Celery's own, and a BRPOP reply ends them at once.

    Internals (kombu 5.7.0): the virtual transport's ``QoS.can_consume()`` (False when the
    prefetch window is full) on ``consumer.task_consumer.channel.qos``, looked up at each poll
    (Celery may replace it on the instance), and ``Connection.drain_events``, replaced on the
    consumer's connection instance (what ``synloop`` calls, with ``timeout=2.0``).

    Returns:
        False when the consumer's channel is not kombu's virtual transport: nothing changed.
    """
    connection = consumer.connection
    channel = getattr(getattr(consumer, "task_consumer", None), "channel", None)
    qos: Any = getattr(channel, "qos", None)
    if connection is None or not callable(getattr(qos, "can_consume", None)):
        return False
    drain_events = connection.drain_events

    def drain_events_with_credit(timeout: float | None = None, **kwargs: Any) -> Any:
        if not qos.can_consume():
            timeout = poll if timeout is None else min(timeout, poll)
        return drain_events(timeout=timeout, **kwargs)

    connection.drain_events = drain_events_with_credit
    return True


def _redis_qos_class() -> Any:
    from kombu.transport.redis import QoS

    return QoS


def hooked_qos_class() -> Any:
    """kombu's Redis ``QoS`` (the ack emulation of one channel), with taskpool's hooks around
    each change of the unacked hash (see :func:`install_qos_hooks`).

    ``hooks`` (set on the instance as ``taskpool_hooks``) has:

    - ``appended(pipe, tag)``: add commands to the pipeline that records a delivery;
    - ``ack(tag)``: remove the delivery from Redis (replaces kombu's ZREM + HDEL);
    - ``requeue(qos, tag)``: put the message back (replaces kombu's restore to the tail);
    - ``restored(tag)``: after kombu restored ``tag`` (its periodic sweep, a channel closing).

    Internals (kombu 5.7.0, kombu/transport/redis.py): ``QoS.append`` (a pipeline of ZADD to
    ``unacked_index_key`` with the time, HSET of ``unacked_key`` to ``[message._raw, exchange,
    routing_key]``, then the virtual ``QoS.append``), ``QoS.reject`` (requeue: ``restore_by_tag(tag,
    leftmost=True)``, an LPUSH: the *tail* of a queue that BRPOP reads from the right),
    ``QoS.restore_by_tag(tag, client, leftmost)``, ``pipe_or_acquire``.
    """
    from kombu.transport import virtual
    from kombu.utils.json import dumps

    base = _redis_qos_class()

    class HookedQoS(base):  # type: ignore[misc,valid-type]
        taskpool_hooks: Any = None

        def append(self, message: Any, delivery_tag: str) -> None:
            delivery = message.delivery_info
            with self.pipe_or_acquire() as pipe:
                pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
                pipe.hset(
                    self.unacked_key,
                    delivery_tag,
                    dumps([message._raw, delivery["exchange"], delivery["routing_key"]]),
                )
                self.taskpool_hooks.appended(pipe, delivery_tag)
                pipe.execute()
            virtual.QoS.append(self, message, delivery_tag)

        def ack(self, delivery_tag: str) -> None:
            self.taskpool_hooks.ack(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)

        def reject(self, delivery_tag: str, requeue: bool = False) -> None:
            if requeue:
                self.taskpool_hooks.requeue(self, delivery_tag)
            else:
                self.taskpool_hooks.ack(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)

        def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
            base.restore_by_tag(self, tag, client=client, leftmost=leftmost)
            self.taskpool_hooks.restored(tag)

    HookedQoS.__name__ = HookedQoS.__qualname__ = "HookedQoS"
    return HookedQoS


_HOOKED: list[Any] = []


def install_qos_hooks(consumer: Any, hooks: Any) -> Any:
    """Give the consumer's task channel the QoS of :func:`hooked_qos_class`, calling ``hooks``.

    Must run before the channel's first delivery (a consumer bootstep's ``start``, after
    Celery's ``Tasks`` step and before the event loop). Internal (kombu 5.7.0): the virtual
    channel keeps its ``QoS`` instance in ``_qos``, made by its property ``qos`` on first use
    (Celery's ``basic_qos``); its class is swapped in place, so the prefetch count and the (empty)
    delivered map stay.

    Returns:
        The channel, or None when it is not kombu's Redis channel (nothing changed).
    """
    channel = getattr(getattr(consumer, "task_consumer", None), "channel", None)
    qos = getattr(channel, "qos", None)
    if qos is None or not isinstance(qos, _redis_qos_class()):
        return None
    if not _HOOKED:
        _HOOKED.append(hooked_qos_class())
    cls = _HOOKED[0]
    if type(qos) is not cls:
        if type(qos) is not _redis_qos_class():
            return None  # someone else's subclass: leave it alone
        if qos._delivered:
            count = len(qos._delivered)
            logger.warning("taskpool: %d message(s) delivered before the delivery leases", count)
        qos.__class__ = cls
    qos.taskpool_hooks = hooks
    return channel


def unacked_keys(channel: Any) -> tuple[str, str]:
    """``(hash, index)``: the names of the unacked hash and its sorted set, before the
    transport's ``global_keyprefix``. Internal (kombu 5.7.0): ``Channel.unacked_key``,
    ``Channel.unacked_index_key`` (``"unacked"``, ``"unacked_index"`` unless set in the
    transport options)."""
    return str(channel.unacked_key), str(channel.unacked_index_key)
