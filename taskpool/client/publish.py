"""What a client checks before it publishes a task: the final configuration and the size.

Installed as the app's ``amqp_cls`` (Celery's own extension point for how task messages are
built and sent): :class:`AMQP` wraps Celery's ``send_task_message`` so every publish
(``.delay()``, ``apply_async``, ``send_task``, canvas, retries, fan-out) goes through it.

- JSON only, checked on the configuration as it is at the first publish of the process (after
  any ``app.conf.update(...)`` made once the app was built; Celery itself reads the serializer
  then and keeps it), and for each message that names its own ``serializer``.
- A message above ``TASKPOOL_MAX_MESSAGE_SIZE`` bytes (serialized, before compression) is
  refused with :class:`~taskpool.errors.MessageTooLarge`; nothing is sent. Large messages sit in
  Redis memory (the broker refuses writes at ``maxmemory``, it does not evict), are copied into
  every worker that reserves them and into the result when ``result_extended`` is on. Pass a
  reference (a path, a URL, an object-store key) instead of the data.
"""

from __future__ import annotations

from typing import Any

from celery.app.amqp import AMQP as CeleryAMQP
from kombu.serialization import dumps
from kombu.utils.objects import cached_property

from taskpool.core.errors import MessageTooLarge
from taskpool.core.settings import check_json_only


def check_size(app: Any, name: str, body: Any, serializer: str | None) -> None:
    """Raise :class:`MessageTooLarge` if ``body`` serializes to more than the app allows.

    Most messages are small: a cheap upper bound of their JSON size decides, and only a body
    that might be too large is serialized here (Celery serializes it again to send it).
    """
    limit = app.settings.max_message_size
    if not limit or json_upper_bound(body, limit) <= limit:
        return
    _, _, data = dumps(body, serializer=serializer or app.conf.task_serializer)
    size = len(data)
    if size > limit:
        raise MessageTooLarge(
            f"task {name!r}: message of {size:,} bytes is above TASKPOOL_MAX_MESSAGE_SIZE={limit:,}; "
            "nothing was sent. Pass a reference to the data (a path, URL or key) instead of the data"
        )


#: Most characters one scalar takes in JSON (a float's repr, an int of 20 digits, a quoted key).
_SCALAR = 32


def json_upper_bound(value: Any, limit: int, max_nodes: int = 2000) -> int:
    """An upper bound of ``value``'s JSON size; ``limit + 1`` once it passes ``limit``, or for
    anything it cannot bound cheaply (unknown types, more than ``max_nodes`` values)."""
    total = 0
    stack = [value]
    nodes = 0
    while stack:
        item = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            return limit + 1
        if item is None or isinstance(item, (bool, int, float)):
            total += _SCALAR
        elif isinstance(item, (str, bytes)):
            total += 6 * len(item) + _SCALAR  # \uXXXX escapes, base64 of bytes: at most 6 per unit
        elif isinstance(item, (list, tuple)):
            total += 2 + len(item)
            stack.extend(item)
        elif isinstance(item, dict):
            total += 2 + 2 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            return limit + 1
        if total > limit:
            return total
    return total


class AMQP(CeleryAMQP):
    """Celery's AMQP (message building and sending) with taskpool's checks before each publish."""

    @cached_property
    def send_task_message(self) -> Any:
        send = self._create_task_sender()
        app = self.app

        checked = False

        def send_task_message(producer: Any, name: str, message: Any, **kwargs: Any) -> Any:
            nonlocal checked
            serializer = kwargs.get("serializer")
            if not checked:
                # Once per process: Celery reads the serializers when it first sends and keeps them.
                # (Copying the whole configuration costs ~1 ms: never per message.)
                check_json_only({**app.conf, "task_serializer": serializer or app.conf.task_serializer})
                checked = True
            elif serializer is not None and "json" not in str(serializer):
                # A message that names its own serializer (Celery passes the task's on every call).
                check_json_only({"task_serializer": serializer})
            check_size(app, name, message.body, serializer)
            return send(producer, name, message, **kwargs)

        return send_task_message
