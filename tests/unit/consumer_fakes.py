"""Small stand-ins for the parts of Celery's consumer that the gate and the batcher touch.

Only what taskpool calls is here: ``qos`` (prefetch loans), ``pool.apply_async``, ``timer``,
``hub.call_soon`` and ``on_task_request``; and a request with the attributes and callbacks
Celery's ``Request`` has. No broker, no Redis.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from taskpool.core.options import TaskOptions


class FakeQoS:
    """``consumer.qos``: counts the prefetch slots lent (increment) and given back (decrement)."""

    def __init__(self) -> None:
        self.lent = 0

    def increment_eventually(self, n: int = 1) -> None:
        self.lent += n

    def decrement_eventually(self, n: int = 1) -> None:
        self.lent -= n


class FakeEntry:
    def __init__(self, seconds: float, fun: Callable[[], Any]) -> None:
        self.seconds = seconds
        self.fun = fun
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTimer:
    """``consumer.timer``: keeps the entries; a test fires them with :meth:`fire`."""

    def __init__(self) -> None:
        self.entries: list[FakeEntry] = []

    def call_after(self, seconds: float, fun: Callable[[], Any]) -> FakeEntry:
        entry = FakeEntry(seconds, fun)
        self.entries.append(entry)
        return entry

    def pending(self) -> list[FakeEntry]:
        return [e for e in self.entries if not e.cancelled and e.fun is not None]

    def fire(self) -> None:
        entries = self.pending()
        for entry in entries:
            fun, entry.fun = entry.fun, None  # type: ignore[assignment]
            fun()


class FakeHub:
    """``consumer.hub``: ``call_soon`` queues; :meth:`run` is one turn of the event loop."""

    def __init__(self) -> None:
        self.soon: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def call_soon(self, fun: Callable[..., Any], *args: Any) -> None:
        self.soon.append((fun, args))

    def run(self) -> int:
        ran = 0
        while self.soon:
            fun, args = self.soon.pop(0)
            fun(*args)
            ran += 1
        return ran


class FakePool:
    """``consumer.pool``: ``apply_async`` records each job (kwargs: callbacks, correlation_id...)."""

    def __init__(self, processes: int = 2) -> None:
        self.num_processes = processes
        self.jobs: list[dict[str, Any]] = []

    def apply_async(self, target: Any, **kwargs: Any) -> dict[str, Any]:
        job = {"target": target, **kwargs}
        self.jobs.append(job)
        return job


class FakeConsumer:
    """The consumer a strategy gets: ``on_task_request`` sends a request to the pool."""

    def __init__(self, *, processes: int = 2, hub: FakeHub | None = None, app: Any = None) -> None:
        self.app = app
        self.hostname = "worker@test"
        self.qos = FakeQoS()
        self.timer = FakeTimer()
        self.hub = hub
        self.pool = FakePool(processes)
        self.dispatched: list[Any] = []

    def on_task_request(self, request: Any) -> None:
        self.dispatched.append(request)
        request.execute_using_pool(self.pool)


_ids = itertools.count(1)


@dataclass(eq=False)
class FakeRequest:
    """A Celery ``Request``: its id, task, message tag, revocation, and the callbacks it gets."""

    task: Any
    id: str = field(default_factory=lambda: f"task-{next(_ids)}")
    is_revoked: bool = False
    request_dict: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, Any]] = field(default_factory=list)
    on_success_hook: Callable[[], Any] | None = None  # called first in on_success
    #: The pool its strategy saw: Celery's ``create_request_cls`` binds ``pool.apply_async``
    #: when the strategy is built, so a gate's view of the pool is the one jobs go through.
    pool: Any = None
    #: Celery's ``Request.delivery_info``: taskpool's queues are routed by their name.
    delivery_info: dict[str, Any] = field(default_factory=lambda: {"routing_key": "q"})

    def __post_init__(self) -> None:
        self.name = self.task.name
        self.task_id = self.id
        self.message = SimpleNamespace(delivery_tag=f"tag-{self.id}")
        self.type, self.body, self.content_type, self.content_encoding = self.name, b"", "json", "utf-8"
        self.args: list[Any] = []
        self.kwargs: dict[str, Any] = {}

    def revoked(self) -> bool:
        if self.is_revoked:
            self.events.append(("revoked", None))
        return self.is_revoked

    def execute_using_pool(self, pool: Any, **_: Any) -> Any:
        return (self.pool or pool).apply_async(
            "trace", callback=self.on_success, error_callback=self.on_failure, correlation_id=self.id
        )

    def on_accepted(self, pid: Any, time_accepted: float) -> None:
        self.events.append(("accepted", pid))

    def on_timeout(self, soft: bool, timeout: float) -> None:
        self.events.append(("timeout", soft))

    def on_success(self, result: Any, **_: Any) -> None:
        if self.on_success_hook is not None:
            self.on_success_hook()
        self.events.append(("success", result))

    def on_failure(self, exc_info: Any, **_: Any) -> None:
        self.events.append(("failure", exc_info))

    def reject(self, requeue: bool = False) -> None:
        self.events.append(("reject", requeue))

    def acknowledge(self) -> None:
        self.events.append(("ack", None))


def fake_task(name: str = "tests.unit.job", **options: Any) -> SimpleNamespace:
    """A task as the worker sees it: ``name``, ``taskpool`` (its options), limits, its app."""
    record, _ = TaskOptions.from_decorator(name, options, default_pool="threads", visibility_timeout=3600)
    app = SimpleNamespace(use_fast_trace_task=True, settings=SimpleNamespace(keyspace="test"))
    return SimpleNamespace(name=name, taskpool=record, app=app, soft_time_limit=None, time_limit=None)
