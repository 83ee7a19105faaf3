"""The fleet's pure part: how many workers a pool should run, and which worker goes first.

No Celery and no Redis here. :class:`FleetPolicy` is one pool's settings (``min_workers``,
``max_workers``, ``buffer_workers``, ``scaledown_window``, as Modal's ``min_containers``,
``max_containers``, ``buffer_containers`` and ``scaledown_window``); :class:`FleetScaler` turns a
:class:`FleetSignal` (the pool's work: queued + reserved + held + running, and the live workers'
capacity) into a :class:`FleetDecision` on an injectable clock; :func:`pick_to_drain` chooses the
workers that go, never a busy one while an idle one exists. The controller
(:mod:`taskpool.ops.fleet`) measures, stores (:mod:`taskpool.stores.fleet`) and applies.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from taskpool.core.errors import ConfigurationError

#: Default seconds a pool's extra workers must go unneeded before they are drained.
DEFAULT_SCALEDOWN_WINDOW = 60.0
#: The options of a fleet policy, in the order the CLI and the README name them.
FLEET_OPTIONS = ("min_workers", "max_workers", "buffer_workers", "scaledown_window")


@dataclass(frozen=True)
class FleetPolicy:
    """How many workers one pool runs.

    Attributes:
        pool: the taskpool pool ("prefork", "threads", "gevent").
        min_workers: workers kept when there is no work (0 allowed: the pool scales to zero).
        max_workers: the most workers, whatever the work.
        buffer_workers: spare workers kept while there is work (beyond what the work fills).
        scaledown_window: seconds extra workers must go unneeded before they are drained.

    Raises:
        ConfigurationError: for an impossible value, naming the pool, the option and the value.
    """

    pool: str
    min_workers: int = 1
    max_workers: int = 1
    buffer_workers: int = 0
    scaledown_window: float = DEFAULT_SCALEDOWN_WINDOW

    def __post_init__(self) -> None:
        where = f"fleet of pool {self.pool!r}"
        for name in ("min_workers", "max_workers", "buffer_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(f"{where}: {name}={value!r} must be an integer")
        if isinstance(self.scaledown_window, bool) or not isinstance(self.scaledown_window, int | float):
            raise ConfigurationError(f"{where}: scaledown_window={self.scaledown_window!r} must be seconds")
        if self.min_workers < 0:
            raise ConfigurationError(f"{where}: min_workers={self.min_workers} must be >= 0")
        if self.max_workers < 1:
            raise ConfigurationError(f"{where}: max_workers={self.max_workers} must be >= 1")
        if self.min_workers > self.max_workers:
            raise ConfigurationError(
                f"{where}: min_workers={self.min_workers} must not exceed max_workers={self.max_workers}"
            )
        if self.buffer_workers < 0:
            raise ConfigurationError(f"{where}: buffer_workers={self.buffer_workers} must be >= 0")
        if not (math.isfinite(self.scaledown_window) and self.scaledown_window >= 0):
            raise ConfigurationError(
                f"{where}: scaledown_window={self.scaledown_window!r} must be a finite number of seconds >= 0"
            )

    @classmethod
    def from_dict(cls, pool: str, values: Mapping[str, Any]) -> FleetPolicy:
        """A policy from stored or configured values; an unknown option is an error naming it."""
        unknown = sorted(set(values) - set(FLEET_OPTIONS) - {"pool"})
        if unknown:
            raise ConfigurationError(
                f"fleet of pool {pool!r}: unknown option {unknown[0]!r} (expected {', '.join(FLEET_OPTIONS)})"
            )
        return cls(pool=pool, **{k: v for k, v in values.items() if k != "pool"})

    def updated(self, **changes: Any) -> FleetPolicy:
        """This policy with ``changes`` (None: unchanged), validated again."""
        unknown = sorted(set(changes) - set(FLEET_OPTIONS))
        if unknown:
            raise ConfigurationError(f"fleet of pool {self.pool!r}: unknown option {unknown[0]!r}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def clamp(self, n: int) -> int:
        return min(self.max_workers, max(self.min_workers, n))

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "pool"}


@dataclass(frozen=True)
class FleetSignal:
    """One pool's work and capacity at one look.

    Attributes:
        queued: messages waiting in the pool's queues in Redis (every priority sub-queue).
        reserved: requests the workers received and have not started (prefetched).
        held: requests held by an admission gate or a batcher (waiting for a slot or a batch).
        running: requests running in the workers' pools.
        capacity: slots (processes, threads, greenlets) of the live workers.
        live: workers that report and are not draining.
        draining: workers that stopped consuming and finish what they hold.
    """

    pool: str
    queued: int = 0
    reserved: int = 0
    held: int = 0
    running: int = 0
    capacity: int = 0
    live: int = 0
    draining: int = 0

    @property
    def work(self) -> int:
        """Everything the pool has to do: queued + reserved + held + running."""
        return self.queued + self.reserved + self.held + self.running

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "work": self.work}


@dataclass(frozen=True)
class FleetDecision:
    """The workers a pool should run now, and why, in words."""

    pool: str
    desired: int
    live: int
    reason: str
    at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FleetScaler:
    """Desired workers per pool: enough slots for the work, plus ``buffer_workers``.

    ``wanted = ceil(work / slots_per_worker) + buffer_workers`` while there is work,
    ``min_workers`` when there is none, clamped to ``[min_workers, max_workers]``. Growing is
    immediate; shrinking follows the largest ``wanted`` of the last ``scaledown_window`` seconds,
    so a worker goes only after it went unneeded that long.

    Args:
        clock: monotonic seconds; injected by tests.
    """

    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    # pool -> (time, wanted) with decreasing wanted: the sliding maximum over the window.
    _windows: dict[str, deque[tuple[float, int]]] = field(default_factory=dict, init=False, repr=False)
    _previous: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def decide(self, policy: FleetPolicy, signal: FleetSignal, slots_per_worker: int) -> FleetDecision:
        """The decision for ``policy.pool``; ``slots_per_worker`` is a worker's capacity (>= 1)."""
        now = self.clock()
        slots = max(1, int(slots_per_worker))
        work = signal.work
        if work <= 0:
            wanted, why = policy.min_workers, "no work"
        else:
            fill = math.ceil(work / slots)
            wanted = fill + policy.buffer_workers
            why = (
                f"work {work} ({signal.queued} queued, {signal.reserved} reserved, {signal.held} held, "
                f"{signal.running} running) / {slots} slots per worker = {fill} "
                f"+ buffer {policy.buffer_workers}"
            )
        wanted = policy.clamp(wanted)
        # The need seen at the previous look may have lasted until now: count it as of now.
        # (A window of 0 gives workers back at once.)
        need = max(wanted, self._previous.get(policy.pool, 0)) if policy.scaledown_window > 0 else wanted
        self._previous[policy.pool] = wanted
        window = self._windows.setdefault(policy.pool, deque())
        while window and window[-1][1] <= need:
            window.pop()
        window.append((now, need))
        while len(window) > 1 and window[0][0] <= now - policy.scaledown_window:
            window.popleft()
        held = policy.clamp(window[0][1])
        if held > wanted:
            age = now - window[0][0]
            window_s = policy.scaledown_window
            why = f"{why}; keeping {held}, needed {age:.1f} s ago (scaledown_window {window_s:g} s)"
            return FleetDecision(policy.pool, held, signal.live, why, time.time())
        if wanted < signal.live:
            why = f"{why}; {signal.live - wanted} worker(s) unneeded for {policy.scaledown_window:g} s"
        return FleetDecision(policy.pool, wanted, signal.live, why, time.time())

    def forget(self, pool: str) -> None:
        """Drop ``pool``'s window (after its policy changed)."""
        self._windows.pop(pool, None)
        self._previous.pop(pool, None)


@dataclass(frozen=True)
class WorkerLoad:
    """What the controller knows of one live worker when it picks who goes.

    Attributes:
        node: the worker's node name.
        busy: requests it holds (reserved + held + running).
        idle_since: wall-clock time it last held nothing; None while busy.
    """

    node: str
    busy: int
    idle_since: float | None = None


def pick_to_drain(workers: Iterable[WorkerLoad], count: int) -> list[str]:
    """The ``count`` workers to drain: idle ones first (the longest idle first), then the least
    busy; so a busy worker is never picked while an idle one is left."""
    if count <= 0:
        return []
    ordered: Sequence[WorkerLoad] = sorted(
        workers,
        key=lambda w: (w.busy > 0, w.idle_since if w.idle_since is not None else math.inf, w.busy, w.node),
    )
    return [w.node for w in ordered[:count]]
