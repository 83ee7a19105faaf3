"""Malformed messages: refused with a dead letter and acknowledged; the worker goes on.

A message on a taskpool queue can be broken at two levels, and plain Celery 5.7 dies at both
("Unrecoverable error", the worker exits; a restored message then kills every worker of the
queue in turn):

1. The transport's envelope. kombu's Redis transport keeps each message in the queue's list as
   a JSON object (``body`` base64, ``headers``, ``properties``). An entry that is not JSON, not
   an object, or whose body is not valid base64 raises inside kombu's BRPOP reader, before
   Celery sees a message. No public hook exists there, so :class:`MessageGuard` wraps the task
   channel's BRPOP handler (``channel.handlers["BRPOP"]``) and remembers the raw reply
   (wrapping the channel client's ``parse_response``): when kombu fails on an entry, the entry
   is recorded and dropped. It was popped from the list and never entered kombu's unacked
   hash, so dropping it is its acknowledgement. Nothing is parsed twice on the happy path.
2. The task message (Celery's protocol 2: ``headers`` with ``task`` and ``id``, the body
   ``[args, kwargs, embed]``). Celery crashes on a body of the wrong shape (``ValueError`` in
   ``Request``), only logs an undecodable body, and runs a task whose args are not a list into
   a ``TypeError`` outside the task's own code (so no dead letter). :class:`MessageGuard` wraps
   the consumer's task handler (``Consumer.create_task_handler``, which Celery's loops call to
   get the ``on_message`` callback) and checks the message first.

A refused message becomes a dead-letter record with ``refused`` (why), ``raw`` (the message as
received, truncated past :data:`RAW_MAX`), ``headers`` and ``queue``; ``taskpool dead ls`` shows
it and ``taskpool dead retry`` refuses to send it again. When the message names a task id, the
result becomes FAILURE with :class:`~taskpool.errors.MalformedMessage`, so a caller waiting on it
learns at once.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from queue import Empty
from typing import Any

import redis
from celery import bootsteps

from taskpool.core.errors import MalformedMessage
from taskpool.core.names import queue_of_key
from taskpool.stores.dead_letters import DeadLetter, now

logger = logging.getLogger("taskpool.malformed")

#: Characters of a refused message kept in its dead letter; the rest is cut with a marker.
RAW_MAX = 64 * 1024


def truncated(text: str, limit: int = RAW_MAX) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[taskpool: truncated, {len(text)} characters in all]"


def as_text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    return bytes(raw).decode("utf-8", "backslashreplace")


_KINDS: dict[type, str] = {list: "a JSON list", str: "a JSON string", dict: "a JSON object"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), f"a JSON {type(value).__name__}")


# -- level 1: the transport's envelope ---------------------------------------------------
def envelope_problem(item: bytes | str) -> str:
    """Why kombu's Redis transport cannot read this list entry (called once it failed on it)."""
    try:
        payload = json.loads(item)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"the queue entry is not JSON ({exc})"
    if not isinstance(payload, dict):
        return f"the queue entry is {_kind(payload)}, not a message envelope (a JSON object)"
    properties = payload.get("properties")
    if not isinstance(properties, dict) or "delivery_tag" not in properties:
        return "the envelope has no 'properties' object with a delivery_tag"
    headers = payload.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return f"the envelope's headers are {_kind(headers)}, not an object"
    body = payload.get("body")
    if body is not None and not isinstance(body, str):
        return f"the envelope's body is {_kind(body)}, not a string"
    if body and properties.get("body_encoding") == "base64":
        try:
            base64.b64decode(body.encode(), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
            return f"the envelope's body is not valid base64 ({exc})"
    return "the envelope could not be read"


def forget_delivery(channel: Any, item: bytes) -> None:
    """Drop a refused entry from kombu's unacked hash, if kombu got as far as putting it there
    (it fails after that on some envelopes, e.g. headers that are a list)."""
    try:
        tag = json.loads(item)["properties"]["delivery_tag"]
    except Exception:
        return  # kombu never got a delivery tag out of it: it is not in the unacked hash
    try:
        channel.qos.ack(tag)  # kombu's Redis QoS removes the tag from the unacked hash and index
    except Exception:
        logger.debug("taskpool: could not ack refused delivery %s", tag, exc_info=True)


# -- level 2: the task message ----------------------------------------------------------
def task_message_problem(message: Any) -> tuple[str | None, str | None, str | None]:
    """``(reason, task name, task id)``: reason is None for a task message Celery can run."""
    headers = message.headers
    if not isinstance(headers, dict):
        return f"headers are {_kind(headers)}, not an object", None, None
    name, task_id = headers.get("task"), headers.get("id")
    try:
        payload = message.payload  # decoded once; Celery reuses the decoded body
    except Exception as exc:
        reason = f"the body could not be decoded as {message.content_type!r}: {exc}"
        return reason, _str_or_none(name), _str_or_none(task_id)
    if name is None:  # protocol 1: everything in the body
        if not isinstance(payload, dict):
            return f"no 'task' header, and the body is {_kind(payload)}, not a task", None, None
        name, task_id = payload.get("task"), payload.get("id")
        args, kwargs = payload.get("args", ()), payload.get("kwargs", {})
    elif isinstance(payload, dict) and "args" in payload:  # Celery's hybrid of protocols 1 and 2
        args, kwargs = payload.get("args", ()), payload.get("kwargs", {})
    else:
        if not (isinstance(payload, (list, tuple)) and len(payload) == 3):
            reason = f"the body is {_kind(payload)}, not [args, kwargs, options]"
            return reason, _str_or_none(name), _str_or_none(task_id)
        args, kwargs, embed = payload
        if embed is not None and not isinstance(embed, dict):
            reason = f"the body's options are {_kind(embed)}, not an object"
            return reason, _str_or_none(name), _str_or_none(task_id)
    if not isinstance(name, str) or not name:
        return f"the task name is {name!r}, not a string", None, _str_or_none(task_id)
    if not isinstance(task_id, str) or not task_id:
        return f"the task id is {task_id!r}, not a string", name, None
    if not isinstance(args, (list, tuple)):
        return f"the task's args are {_kind(args)}, not a list", name, task_id
    if not isinstance(kwargs, dict):
        return f"the task's kwargs are {_kind(kwargs)}, not an object", name, task_id
    return None, name, task_id


def broker_errors(owner: Any) -> tuple[type[BaseException], ...]:
    """Errors that mean the broker went away: they pass through to Celery (reconnect).

    kombu's Redis transport counts ``KeyError`` among its connection errors; a malformed
    envelope raises it too (no ``properties``), so it is left out here: a ``KeyError`` on an
    entry just read is the entry's fault.
    """
    errors = (
        redis.RedisError,
        *tuple(getattr(owner, "connection_errors", ())),
        *tuple(getattr(owner, "channel_errors", ())),
    )
    return tuple(e for e in errors if isinstance(e, type) and e is not KeyError)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class MessageGuard(bootsteps.StartStopStep):
    """Consumer bootstep: malformed messages become dead letters instead of killing the worker."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.app = parent.app
        original = getattr(parent, "create_task_handler", None)
        if original is not None and not getattr(original, "taskpool_wrapped", False):

            def create_task_handler(*args: Any, **kw: Any) -> Any:
                return self.guard(parent, original(*args, **kw))

            create_task_handler.taskpool_wrapped = True  # type: ignore[attr-defined]
            parent.create_task_handler = create_task_handler

    # -- level 1 ---------------------------------------------------------------------
    def start(self, c: Any) -> None:
        """Guard the BRPOP reader of the (new) task channel: at startup and each reconnect."""
        channel: Any = getattr(getattr(c, "task_consumer", None), "channel", None)
        handlers: Any = getattr(channel, "handlers", None)
        read = handlers.get("BRPOP") if isinstance(handlers, dict) else None
        if channel is None or read is None or getattr(read, "taskpool_wrapped", False):
            return  # not kombu's Redis transport: nothing to guard at this level
        client = channel.client
        parse_response = client.parse_response
        last: list[Any] = [None]
        passthrough: tuple[type[BaseException], ...] = (Empty, *broker_errors(channel))

        def remember(connection: Any, command: str, **options: Any) -> Any:
            reply = parse_response(connection, command, **options)
            if command == "BRPOP":
                last[0] = reply
            return reply

        def guarded_read(**options: Any) -> Any:
            last[0] = None
            try:
                return read(**options)
            except passthrough:
                raise
            except Exception as exc:
                reply, last[0] = last[0], None
                if not reply:
                    raise  # not about an entry it read: Celery decides, as before
                queue, item = reply
                self.refuse_entry(queue_of_key(as_text(queue)), item, exc)
                forget_delivery(channel, item)
                return True

        guarded_read.taskpool_wrapped = True  # type: ignore[attr-defined]
        client.parse_response = remember
        handlers["BRPOP"] = guarded_read

    def refuse_entry(self, queue: str, item: bytes, exc: BaseException) -> None:
        reason = envelope_problem(item)
        self.record(
            reason=f"{reason}; kombu: {type(exc).__name__}: {exc}",
            raw=item,
            headers=None,
            queue=queue,
            name=None,
            task_id=None,
        )

    # -- level 2 ---------------------------------------------------------------------
    def guard(self, consumer: Any, handler: Any) -> Any:
        """``handler`` (Celery's ``on_task_received``) behind the task-message checks."""
        passthrough = broker_errors(consumer)
        strategies = consumer.strategies

        def on_task_received(message: Any) -> Any:
            reason, name, task_id = task_message_problem(message)
            if reason is not None:
                return self.refuse(message, reason, name, task_id)
            if name not in strategies:
                self.unknown_task(message, name, task_id)  # then Celery's own on_unknown_task
            try:
                return handler(message)
            except passthrough:
                raise
            except Exception as exc:
                logger.exception("taskpool: the worker could not take %s[%s]", name, task_id)
                return self.refuse(message, f"the worker could not take it: {exc!r}", name, task_id)

        return on_task_received

    def refuse(self, message: Any, reason: str, name: str | None, task_id: str | None) -> None:
        headers = message.headers if isinstance(message.headers, dict) else None
        queue = (
            (message.delivery_info or {}).get("routing_key")
            if isinstance(message.delivery_info, dict)
            else None
        )
        try:
            self.record(
                reason=reason, raw=message.body, headers=headers, queue=queue, name=name, task_id=task_id
            )
        finally:
            if not message.acknowledged:
                message.ack()

    def unknown_task(self, message: Any, name: str | None, task_id: str | None) -> None:
        """A task this worker does not know: a dead letter to retry once a worker has it."""
        payload = message.payload
        args, kwargs = (payload[0], payload[1]) if isinstance(payload, (list, tuple)) else ([], {})
        exc = MalformedMessage(f"task {name!r} is not registered on this worker")
        record = DeadLetter(
            task=name or "",
            task_id=task_id or "",
            args=list(args),
            kwargs=dict(kwargs),
            exception=repr(exc),
            traceback="",
            attempts=0,
            failed_at=now(),
            queue=(message.delivery_info or {}).get("routing_key"),
        )
        try:
            self.app.dead_letters.add(record)
        except redis.RedisError:
            logger.exception("taskpool: could not store the dead letter of unknown task %s", name)

    def record(
        self,
        *,
        reason: str,
        raw: bytes | str | None,
        headers: dict[str, Any] | None,
        queue: str | None,
        name: str | None,
        task_id: str | None,
    ) -> None:
        exc = MalformedMessage(f"message refused: {reason}")
        record = DeadLetter(
            task=name or "",
            task_id=task_id or "",
            args=[],
            kwargs={},
            exception=repr(exc),
            traceback="",
            attempts=0,
            failed_at=now(),
            queue=queue,
            refused=reason,
            raw=truncated(as_text(raw)),
            headers=headers,
        )
        try:
            self.app.dead_letters.add(record)
        except redis.RedisError:
            logger.exception("taskpool: could not store the dead letter of a refused message: %s", reason)
        else:
            logger.error(
                "taskpool: refused a malformed message on queue %s (%s); dead letter %s",
                queue,
                reason,
                record.id,
            )
        if task_id:
            try:
                self.app.backend.mark_as_failure(task_id, exc, request=None)
            except Exception:
                logger.exception("taskpool: could not store the failure of refused task %s", task_id)
