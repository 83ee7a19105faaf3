"""kombu internals taskpool relies on, in one place (read from kombu 5.x's Redis transport).

Each function names the private attribute it uses; tests/test_compat.py fails loudly when one
of them changes.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("taskpool.admission")


def restore_messages(consumer: Any, tags: list[str]) -> int:
    """Put messages delivered on a closed channel back on their queues, by delivery tag.

    kombu's Redis transport restores unacked messages when the old channel closes, but after
    a Redis restart that happens while Redis is still down and fails, leaving them in the
    unacked hash until ``visibility_timeout``. A tag kombu already restored is a no-op.
    """
    channel = getattr(getattr(consumer, "task_consumer", None), "channel", None)
    restore = getattr(getattr(channel, "qos", None), "restore_by_tag", None)
    if not tags or restore is None:
        return 0  # nothing to do, or a broker that redelivers by itself (AMQP)
    restored = 0
    for tag in reversed(tags):  # each goes to the head of its queue: keep their order
        try:
            restore(tag)
            restored += 1
        except Exception:
            logger.exception(
                "taskpool: could not restore message %s; it returns after the visibility timeout", tag
            )
    return restored


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
