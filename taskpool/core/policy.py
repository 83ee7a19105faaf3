"""The autoscaler's pure part: what a worker knows of its pool (PoolStats) and the built-in policy.

No Celery and no Redis here: :class:`ScalingPolicy` turns a :class:`PoolStats` snapshot into a
:class:`Decision` on an injectable clock; the worker's autoscaler
(:mod:`taskpool.worker.autoscale`) measures the pool and applies the decision.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from taskpool.core.errors import ConfigurationError

#: Default seconds without need before capacity is given back (Celery's keepalive).
DEFAULT_COOLDOWN = 30.0
#: Default spare slots kept while a pool has work.
DEFAULT_BUFFER = 1


def parse_bounds(value: Any, *, what: str = "--autoscale") -> tuple[int, int | None]:
    """``"max,min"``, ``"max"``, ``(max, min)`` or ``[max, min]`` -> (max, min or None).

    Raises:
        ConfigurationError: when it is not one or two integers.
    """
    parts: list[Any]
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        parts = [value]
    try:
        if not 1 <= len(parts) <= 2:
            raise ValueError
        high = int(parts[0])
        low = int(parts[1]) if len(parts) == 2 and parts[1] not in ("", None) else None
    except (TypeError, ValueError):
        raise ConfigurationError(f"{what}={value!r}: expected 'max,min' (two integers)") from None
    return high, low


@dataclass(frozen=True)
class PoolStats:
    """What a worker knows about its pool at one tick; a callback's optional second argument.

    Attributes:
        pool: the taskpool pool.
        current: the pool's size now.
        active: tasks running now.
        reserved: tasks received by this worker and not started yet (prefetched).
        queue_depth: messages waiting in the pool's queue(s) in Redis.
        arrivals_per_second: task messages this worker received per second, last few seconds.
        mean_runtime: seconds a task takes, estimated over the last few seconds
            (Little's law: mean running tasks / completions per second); None before any.
        slots_waiting: requests held back waiting for limits or GPU slots (admission).
        cpu_utilisation: prefork: the children's CPU use per process (0-1), else None.
        at: wall-clock time of the snapshot.
    """

    pool: str
    current: int
    active: int = 0
    reserved: int = 0
    queue_depth: int = 0
    arrivals_per_second: float = 0.0
    mean_runtime: float | None = None
    slots_waiting: int = 0
    cpu_utilisation: float | None = None
    at: float = 0.0

    @property
    def in_flight(self) -> int:
        """Tasks this worker holds: running or waiting for a slot."""
        return self.active + self.reserved + self.slots_waiting

    @property
    def demand(self) -> int:
        """Slots the pool could use now: in flight plus the queue's backlog."""
        return self.in_flight + self.queue_depth

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    """A scaling decision: the target size and the reason, in words."""

    target: int
    reason: str


@dataclass
class ScalingPolicy:
    """The built-in policy: enough slots for the work in flight and queued, plus a buffer.

    ``target = demand + buffer`` while there is work (``demand`` = running + reserved + waiting
    for slots + queued in Redis), the minimum when there is none, clamped to ``[min, max]``.
    Growing is immediate. Shrinking follows the largest target of the last ``cooldown`` seconds,
    so capacity is given back only after it went unneeded for that long: a steady load never
    oscillates. With ``target_cpu`` (prefork) the target is the number of processes that keeps
    the children's CPU use near that share, never more than the demand plus buffer.

    Args:
        clock: monotonic seconds; injected by tests.
    """

    min: int
    max: int
    buffer: int = DEFAULT_BUFFER
    cooldown: float = DEFAULT_COOLDOWN
    target_cpu: float | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    # (time, wanted) with decreasing wanted: the sliding maximum over the cooldown window.
    _window: deque[tuple[float, int]] = field(default_factory=deque, init=False, repr=False)
    _previous: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.update()

    def update(
        self,
        *,
        min: int | None = None,
        max: int | None = None,
        buffer: int | None = None,
        cooldown: float | None = None,
    ) -> None:
        """Change the policy at runtime; raises ``ValueError`` for impossible values."""
        new_min = self.min if min is None else int(min)
        new_max = self.max if max is None else int(max)
        new_buffer = self.buffer if buffer is None else int(buffer)
        new_cooldown = self.cooldown if cooldown is None else float(cooldown)
        if new_min < 1:
            raise ValueError(f"min={new_min} must be >= 1")
        if new_max < new_min:
            raise ValueError(f"max={new_max} must be >= min={new_min}")
        if new_buffer < 0:
            raise ValueError(f"buffer={new_buffer} must be >= 0")
        if not (math.isfinite(new_cooldown) and new_cooldown >= 0):
            raise ValueError(f"cooldown={new_cooldown} must be a finite number of seconds >= 0")
        self.min, self.max, self.buffer, self.cooldown = new_min, new_max, new_buffer, new_cooldown

    def clamp(self, n: int) -> int:
        return min(self.max, max(self.min, n))

    def decide(self, current: int, stats: PoolStats) -> Decision:
        now = self.clock()
        demand = stats.demand
        if demand <= 0:
            wanted, why = self.min, "no work"
        elif self.target_cpu is not None and stats.cpu_utilisation is not None and current > 0:
            by_cpu = math.ceil(current * stats.cpu_utilisation / self.target_cpu)
            wanted = max(1, min(demand + self.buffer, by_cpu))
            why = (
                f"cpu {stats.cpu_utilisation:.0%} of {current} process(es), target {self.target_cpu:.0%}, "
                f"demand {demand}"
            )
        else:
            wanted = demand + self.buffer
            why = (
                f"demand {demand} ({stats.active} running, {stats.reserved} reserved, "
                f"{stats.queue_depth} queued) + buffer {self.buffer}"
            )
        wanted = self.clamp(wanted)
        # The need seen at the previous look may have lasted until now: count it as of now, so
        # capacity is never given back before `cooldown` seconds have passed without need.
        need, self._previous = max(wanted, self._previous), wanted
        window = self._window
        while window and window[-1][1] <= need:
            window.pop()
        window.append((now, need))
        while window[0][0] < now - self.cooldown:
            window.popleft()
        held = self.clamp(window[0][1])  # the largest target of the last `cooldown` seconds
        if held > wanted:
            age = now - window[0][0]
            return Decision(
                held, f"{why}; keeping {held}, needed {age:.1f} s ago (cooldown {self.cooldown:g} s)"
            )
        if wanted < current:
            return Decision(wanted, f"{why}; {current - wanted} slot(s) unneeded for {self.cooldown:g} s")
        return Decision(wanted, why)
