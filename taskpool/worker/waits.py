"""Why a held request waits: one :class:`Wait` per refusal, and the summary ``inspect stats`` shows.

A request the admission gate holds waits for the first thing that refused it: a semaphore
(``limit tenant:acme 5/5``, ``gpu host-a 2/2``, ``cluster_max_in_flight task:app.call:acme 5/5``,
``max_in_flight app.call 2/2``) or a rate (``rate api:openai``). :func:`summary` groups the
waiters per task and reason (``taskpool.waits`` in ``inspect stats``, ``taskpool status``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from taskpool.core import names
from taskpool.core.limits import Need

#: The ``reason`` label of ``taskpool_wait_seconds``: the kind of what a request waited for.
RATE = "rate"


@dataclass(frozen=True)
class Wait:
    """What refused a request: ``kind`` (a semaphore kind or ``rate``), ``name`` (the limit, rate,
    machine or task), slots in use of ``capacity`` (semaphores), and for a rate when it conforms
    again (``retry_at``, ``time.monotonic()``)."""

    kind: str
    name: str
    used: int | None = None
    capacity: int | None = None
    retry_at: float | None = None

    @property
    def reason(self) -> str:
        if self.kind == RATE:
            return f"rate {self.name}"
        return f"{self.kind} {self.name} {self.used}/{self.capacity}"


def semaphore_wait(need: Need, free: int) -> Wait:
    """The wait of a request refused by ``need``'s semaphore, which had ``free`` slots."""
    kind, rest = names.kind_of(need.name)
    if kind == names.MAX_IN_FLIGHT:
        node, task = names.node_and_task(rest)
        rest = f"{task} on {node}"
    elif kind == names.CLUSTER_MAX_IN_FLIGHT:
        rest = need.name
    return Wait(kind or need.kind, rest, max(need.capacity - free, 0), need.capacity)


def rate_wait(name: str, wait: float) -> Wait:
    return Wait(RATE, name, retry_at=time.monotonic() + wait)


def summary(waiters: Iterable[tuple[str, Wait, float]], now: float | None = None) -> list[dict[str, Any]]:
    """Per task and reason: ``{"task", "reason", "kind", "key", "count", "oldest_wait"}`` (seconds),
    from ``(task, wait, since)`` triples (``since`` on the ``time.monotonic()`` clock); the longest
    waits first."""
    now = time.monotonic() if now is None else now
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for task, wait, since in waiters:
        reason = wait.reason
        g = groups.setdefault(
            (task, reason),
            {
                "task": task,
                "reason": reason,
                "kind": wait.kind,
                "key": wait.name,
                "count": 0,
                "oldest_wait": 0.0,
            },
        )
        g["count"] += 1
        g["oldest_wait"] = round(max(g["oldest_wait"], now - since), 3)
    return sorted(groups.values(), key=lambda g: (-g["oldest_wait"], g["task"], g["reason"]))


#: Upper bounds (seconds) of ``taskpool_wait_seconds``'s buckets (prometheus-client's defaults).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class WaitTimes:
    """How long admitted requests waited, per reason kind: a histogram the metrics endpoint
    exports as ``taskpool_wait_seconds{reason}`` (kinds, not keys: one series per kind)."""

    def __init__(self) -> None:
        self._data: dict[str, list[float]] = {}  # kind -> [count per bucket..., +Inf count, sum]

    def observe(self, kind: str, seconds: float) -> None:
        row = self._data.setdefault(kind, [0.0] * (len(BUCKETS) + 2))
        for i, le in enumerate(BUCKETS):
            if seconds <= le:
                row[i] += 1
        row[len(BUCKETS)] += 1
        row[-1] += seconds

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``{kind: {"buckets": [[le, cumulative count], ...], "count": n, "sum": s}}`` (JSON-able)."""
        return {
            kind: {
                "buckets": [[le, int(row[i])] for i, le in enumerate(BUCKETS)],
                "count": int(row[len(BUCKETS)]),
                "sum": round(row[-1], 6),
            }
            for kind, row in list(self._data.items())
        }
