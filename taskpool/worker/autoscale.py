"""CallbackAutoscaler: a worker's concurrency follows the user's callback or a ScalingPolicy.

Celery's autoscaler exists only with ``--autoscale``, reacts every ``keepalive`` (30 s) on
event-loop pools, dies with any exception and cannot scale the threads pool. taskpool's:

* is set by :class:`~taskpool.app.TaskPool` itself (``worker_autoscaler``) and enabled for every
  prefork, threads and gevent worker by :func:`configure_worker` (``worker_init``); bounds come
  from ``--autoscale=max,min``, else ``TASKPOOL_AUTOSCALE_<POOL>``, else ``-c`` (fixed size);
* ticks once a second: on the event-loop pools (prefork, threads) through Celery's own hub timer
  (``keepalive`` is the tick), on gevent in Celery's autoscaler thread (a greenlet);
* asks the pool's concurrency modifier (``@app.concurrency_modifier``) on its own thread, so a
  callback that raises, hangs or returns nonsense never stops the worker, or else the built-in
  :class:`ScalingPolicy` (min, max, buffer, cooldown; or a CPU target on prefork);
* grows at once and shrinks only idle capacity: no running task is ever interrupted;
* reports current, target, bounds, the last decision and why, and fault counts in
  ``inspect stats`` (``stats()['autoscaler']``), which Flower shows.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import operator
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import redis
from celery.utils.imports import symbol_by_name
from celery.worker import state as worker_state
from celery.worker.autoscale import Autoscaler
from celery.worker.control import control_command, nok, ok

from taskpool.client.routing import pool_of_worker, redis_queue_keys
from taskpool.core.errors import ConfigurationError
from taskpool.core.settings import ENV_PREFIX, POOLS
from taskpool.worker.admission import waiting_count_of
from taskpool.worker.batching import batch_discount

if TYPE_CHECKING:
    from taskpool.client.app import TaskPool as App

logger = logging.getLogger("taskpool.autoscale")

#: Seconds between two ticks: the callback is asked at least this often.
TICK = 1.0
#: Default seconds without need before capacity is given back (Celery's keepalive).
DEFAULT_COOLDOWN = 30.0
#: Default spare slots kept while a pool has work.
DEFAULT_BUFFER = 1
#: Default seconds a callback may run before it counts as hanging.
DEFAULT_CALLBACK_TIMEOUT = 2.0
#: How long a tick waits for the callback's answer before moving on (keeps the hub responsive).
INLINE_WAIT = 0.05
#: Seconds of history behind arrivals_per_second and mean_runtime.
RATE_WINDOW = 5.0
#: Decisions kept for ``inspect stats``.
HISTORY = 20

#: The most slots an autoscaler may give one worker of each pool, whatever it is told (the
#: command line, TASKPOOL_AUTOSCALE_<POOL>, `taskpool scale`, `celery control autoscale`).
#: Beyond these a worker spends more on its slots than on its tasks: run more workers instead.
MAX_CONCURRENCY = {"prefork": 256, "threads": 512, "gevent": 10_000}
CELERY_THREADS_POOL = "celery.concurrency.thread:TaskPool"
CELERY_SOLO_POOL = "celery.concurrency.solo:TaskPool"
CELERY_PREFORK_POOL = "celery.concurrency.prefork:TaskPool"
THREADS_POOL = "taskpool.worker.pools.threads:TaskPool"
PREFORK_POOL = "taskpool.worker.pools.prefork:TaskPool"


# -- configuration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class AutoscaleConfig:
    """One pool's autoscaling settings.

    Read by :meth:`from_env` from ``TASKPOOL_AUTOSCALE_<POOL>`` (``"max,min"``), then
    ``TASKPOOL_AUTOSCALE_<POOL>_<NAME>`` over ``TASKPOOL_AUTOSCALE_<NAME>`` for ``BUFFER``,
    ``COOLDOWN``, ``TARGET_CPU`` and ``CALLBACK_TIMEOUT``, and the modifier's dotted path from
    ``TASKPOOL_CONCURRENCY_MODIFIER_<POOL>``. The lowercase names (``autoscale_gevent``) also work
    in the config module; the environment wins.

    Attributes:
        pool: the taskpool pool ("prefork", "threads", "gevent").
        max: upper bound; None: the worker's ``-c``.
        min: lower bound (>= 1); None: ``max`` without a modifier (a fixed-size pool), else 1.
        buffer: spare slots kept while the pool has work.
        cooldown: seconds without need before capacity is given back.
        target_cpu: prefork only: scale to keep the children's CPU near this share (0.05-0.95).
        callback_timeout: seconds after which a running callback counts as hanging.
        modifier: dotted path (``module:function``) of the pool's concurrency modifier, if any.
    """

    pool: str
    max: int | None = None
    min: int | None = None
    buffer: int = DEFAULT_BUFFER
    cooldown: float = DEFAULT_COOLDOWN
    target_cpu: float | None = None
    callback_timeout: float = DEFAULT_CALLBACK_TIMEOUT
    modifier: str | None = None

    def __post_init__(self) -> None:
        where = f"autoscale of pool {self.pool!r}"
        if self.pool not in POOLS:
            raise ConfigurationError(f"{where}: pool must be one of {', '.join(POOLS)}")
        if self.max is not None and self.max < 1:
            raise ConfigurationError(f"{where}: max={self.max} must be >= 1")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigurationError(f"{where}: min={self.min} must not exceed max={self.max}")
        if self.buffer < 0:
            raise ConfigurationError(f"{where}: buffer={self.buffer} must be >= 0")
        if self.cooldown < 0:
            raise ConfigurationError(f"{where}: cooldown={self.cooldown} must be >= 0 seconds")
        if self.callback_timeout <= 0:
            raise ConfigurationError(f"{where}: callback_timeout={self.callback_timeout} must be > 0")
        if self.target_cpu is not None:
            if self.pool != "prefork":
                raise ConfigurationError(f"{where}: target_cpu is for prefork pools, got pool {self.pool!r}")
            if not 0.05 <= self.target_cpu <= 0.95:
                raise ConfigurationError(f"{where}: target_cpu={self.target_cpu} must be within 0.05-0.95")

    @classmethod
    def from_env(
        cls, pool: str, environ: Mapping[str, str] | None = None, conf: Mapping[str, Any] | None = None
    ) -> AutoscaleConfig:
        """Read ``pool``'s settings from ``environ`` (default ``os.environ``) over ``conf``."""
        env = os.environ if environ is None else environ
        conf = conf or {}

        def raw(*names: str) -> tuple[str, Any] | None:
            for name in names:  # most specific first; the environment before the config module
                value = env.get(ENV_PREFIX + name.upper())
                if value not in (None, ""):
                    return ENV_PREFIX + name.upper(), value
            for name in names:
                value = conf.get(name.lower())
                if value not in (None, ""):
                    return name.lower(), value
            return None

        def number(kind: Callable[[Any], Any], name: str) -> Any:
            found = raw(f"autoscale_{pool}_{name}", f"autoscale_{name}")
            if found is None:
                return None
            key, value = found
            try:
                return kind(value)
            except (TypeError, ValueError):
                raise ConfigurationError(f"setting {key}={value!r}: expected a {kind.__name__}") from None

        values: dict[str, Any] = {"pool": pool}
        bounds = raw(f"autoscale_{pool}")
        if bounds is not None:
            values["max"], values["min"] = parse_bounds(bounds[1], what=bounds[0])
        for name, kind in (("buffer", int), ("cooldown", float), ("target_cpu", float)):
            value = number(kind, name)
            if value is not None:
                values[name] = value
        timeout = number(float, "callback_timeout")
        if timeout is not None:
            values["callback_timeout"] = timeout
        modifier = raw(f"concurrency_modifier_{pool}")
        if modifier is not None:
            values["modifier"] = modifier[1]
        return cls(**values)


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


# -- the user's callback -----------------------------------------------------------------------
def register_modifier(
    registry: dict[str, Callable[..., Any]], fun: Callable[..., Any] | None, *, pool: str
) -> Any:
    """Implements ``@app.concurrency_modifier(pool=...)``: store ``fun`` as ``pool``'s modifier.

    Raises:
        ConfigurationError: for an unknown pool, a non-callable, or a second modifier of a pool.
    """
    if pool not in POOLS:
        raise ConfigurationError(f"concurrency_modifier: pool={pool!r} must be one of {', '.join(POOLS)}")

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(f):
            raise ConfigurationError(f"concurrency_modifier(pool={pool!r}): {f!r} is not callable")
        old = registry.get(pool)
        if old is not None and old is not f:
            raise ConfigurationError(
                f"concurrency_modifier(pool={pool!r}): {_name(f)} would replace {_name(old)}; "
                "a pool has one modifier"
            )
        registry[pool] = f
        return f

    return decorate if fun is None else decorate(fun)


def wants_stats(fun: Callable[..., Any]) -> bool:
    """Whether ``fun`` takes a second positional argument (the :class:`PoolStats` snapshot)."""
    try:
        params = inspect.signature(fun).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _name(fun: Any) -> str:
    return f"{getattr(fun, '__module__', '?')}.{getattr(fun, '__qualname__', repr(fun))}"


class _Call:
    """One call of the user's callback, on a thread of its own, so it can neither block nor kill the tick."""

    def __init__(self, fun: Callable[..., Any], args: tuple[Any, ...], started: float) -> None:
        self.done = threading.Event()
        self.started = started
        self.value: Any = None
        self.error: BaseException | None = None
        self.hang_reported = False
        self._fun = fun
        self._args = args
        threading.Thread(target=self._run, name="taskpool-concurrency-modifier", daemon=True).start()

    def _run(self) -> None:
        try:
            self.value = self._fun(*self._args)
        except BaseException as exc:  # even SystemExit: it must not end the worker
            self.error = exc
        finally:
            self.done.set()


# -- stats and policy (pure) -------------------------------------------------------------------
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


# -- the autoscaler ----------------------------------------------------------------------------
@dataclass
class WorkerSetup:
    """What :func:`configure_worker` hands the autoscaler through the worker (set at ``worker_init``)."""

    app: Any
    config: AutoscaleConfig
    modifier: Callable[..., Any] | None


class CallbackAutoscaler(Autoscaler):
    """Celery's ``Autoscaler`` driven by a callback or :class:`ScalingPolicy`, once a second.

    Celery builds it (``worker_autoscaler``) with ``(pool, max, min, worker=, mutex=)``; the rest
    comes from ``worker.taskpool_autoscale`` (a :class:`WorkerSetup`), or defaults.
    Celery uses ``keepalive`` as the period of its hub timer: here it is the 1 s tick.
    """

    def __init__(
        self,
        pool: Any,
        max_concurrency: int,
        min_concurrency: int = 1,
        worker: Any = None,
        keepalive: float = TICK,
        mutex: Any = None,
        *,
        setup: WorkerSetup | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            pool, max_concurrency, min_concurrency, worker=worker, keepalive=keepalive, mutex=mutex
        )
        setup = setup or getattr(worker, "taskpool_autoscale", None)
        app = setup.app if setup else getattr(worker, "app", None)
        self.config = setup.config if setup else AutoscaleConfig(pool=_pool_name(worker, pool))
        self.pool_name = self.config.pool
        self.modifier = setup.modifier if setup else None
        self.clock = clock
        self.min_concurrency = max(1, int(min_concurrency or 1))
        self.max_concurrency = max(self.min_concurrency, int(max_concurrency or self.min_concurrency))
        self.policy = ScalingPolicy(
            self.min_concurrency,
            self.max_concurrency,
            self.config.buffer,
            self.config.cooldown,
            self.config.target_cpu,
            clock=clock,
        )
        self._modifier_gets_stats = self.modifier is not None and wants_stats(self.modifier)
        self.target = self.min_concurrency  # Celery starts the pool at min (not started yet here)
        self.faults: dict[str, int] = {}
        self._logged: set[str] = set()
        self.decisions: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.ticks = 0
        self.stats: PoolStats | None = None
        self._call: _Call | None = None
        self._arrivals = 0
        self._samples: deque[tuple[float, int, int, int]] = deque()  # (t, arrivals, completed, active)
        self._queue_depth = 0
        self._incoming: Any = None  # the request Celery is handing on while it calls maybe_scale
        self._redis = self._queue_keys = None
        if app is not None:
            self._redis, self._queue_keys = _queue_probe(app)
        self._cpu: dict[int, float] = {}
        self._cpu_at = 0.0
        logger.info(
            "taskpool: autoscaler for %s pool: %s, min %d, max %d",
            self.pool_name,
            f"modifier {_name(self.modifier)}" if self.modifier else self._policy_words(),
            self.min_concurrency,
            self.max_concurrency,
        )

    # -- Celery's entry points -----------------------------------------------------------------
    def body(self) -> None:
        """The autoscaler thread's loop body (gevent): one tick, then sleep."""
        with self.mutex:
            self.maybe_scale()
        time.sleep(self.keepalive)

    def maybe_scale(self, req: Any = None) -> None:
        """Hub timer (req None, each tick) and every task message (req set) on event-loop pools."""
        try:
            if req is None:
                self._tick(sample=True)
            else:
                # Celery calls this between reserving the request and handing it on.
                self._incoming = req
                try:
                    self._on_message()
                finally:
                    self._incoming = None
        except Exception as exc:  # any exception here would kill the worker
            self._fault("internal", exc, exc_info=True)

    def on_task_received(self, req: Any) -> None:
        """Every task message on pools without an event loop (gevent)."""
        try:
            if self.mutex.acquire(False):
                try:
                    self._on_message()
                finally:
                    self.mutex.release()
            else:
                self._arrivals += 1
        except Exception as exc:
            self._fault("internal", exc, exc_info=True)

    def update(self, max: int | None = None, min: int | None = None) -> tuple[int, int]:
        """``celery control autoscale`` and Flower's form: new bounds, applied at once."""
        high, low, _, _ = self.reconfigure(max=max, min=min)
        return high, low

    def reconfigure(
        self,
        *,
        max: int | None = None,
        min: int | None = None,
        buffer: int | None = None,
        cooldown: float | None = None,
    ) -> tuple[int, int, int, float]:
        """Change bounds and policy at runtime (until the worker restarts); returns them.

        Raises:
            ValueError: for impossible values (the control reply carries the message).
        """
        ceiling = MAX_CONCURRENCY.get(self.pool_name)
        if max is not None and ceiling is not None and int(max) > ceiling:
            raise ValueError(
                f"max={max} is above the {self.pool_name} pool's ceiling of {ceiling} slots per worker "
                "(run more workers instead)"
            )
        with self.mutex:
            old_max = self.max_concurrency
            if min is not None and int(min) < 1:
                self._fault("min_below_one", int(min))
                min = 1
            self.policy.update(min=min, max=max, buffer=buffer, cooldown=cooldown)
            self.min_concurrency, self.max_concurrency = self.policy.min, self.policy.max
            if self.max_concurrency != old_max and self.worker is not None:
                self._update_consumer_prefetch_count_from(old_max, self.max_concurrency)
                # Celery's worker_disable_prefetch reads the worker's (not the autoscaler's) max.
                self.worker.max_concurrency = self.max_concurrency
            p = self.policy
            self._apply(p.clamp(self.target), f"bounds set to min {p.min}, max {p.max}", self.clock())
            return p.max, p.min, p.buffer, p.cooldown

    def info(self) -> dict[str, Any]:
        last = self.decisions[-1] if self.decisions else None
        return {
            "pool": self.pool_name,
            "mode": "callback" if self.modifier else ("cpu" if self.policy.target_cpu else "policy"),
            "callback": _name(self.modifier) if self.modifier else None,
            "current": self.processes,
            "target": self.target,
            "min": self.min_concurrency,
            "max": self.max_concurrency,
            "qty": self.qty,
            "buffer": self.policy.buffer,
            "cooldown": self.policy.cooldown,
            "target_cpu": self.policy.target_cpu,
            "last_decision": last,
            "decisions": list(self.decisions),
            "faults": dict(self.faults),
            "ticks": self.ticks,
            "stats": self.stats.as_dict() if self.stats else None,
        }

    # -- the tick ------------------------------------------------------------------------------
    def _on_message(self) -> None:
        self._arrivals += 1
        # Without a callback, react to a burst at once; the check is one len() (no Redis).
        if self.modifier is None and self.target < self.max_concurrency:
            demand = len(worker_state.reserved_requests) + self._queue_depth
            if demand + self.policy.buffer > self.target:
                self._tick(sample=False)

    def _tick(self, *, sample: bool) -> None:
        now = self.clock()
        current = self.processes
        stats = self._snapshot(now, current, sample)
        if sample:
            self.ticks += 1
            self.stats = stats
        if self.modifier is not None:
            if sample:
                asked = self._ask_modifier(stats, now)
                if asked is not None:
                    self._apply(*asked, now)
                elif self.target != current:
                    self._apply(self.target, "", now)  # finish a shrink that waited for idle slots
            return
        decision = self.policy.decide(current, stats)
        self._apply(decision.target, decision.reason, now)

    def _apply(self, target: int, reason: str, now: float) -> None:
        target = self.policy.clamp(target)
        before_target, current = self.target, self.processes
        self.target = target
        if target > current:
            self._grow(target - current)
        elif target < current:
            idle = self._idle(current)
            if idle > 0:
                self._shrink(min(current - target, idle))
        after = self.processes
        if target != before_target or (after != current and reason):
            self.decisions.append(
                {"at": time.time(), "from": current, "to": target, "now": after, "reason": reason}
            )
            logger.info(
                "taskpool: %s pool %d -> %d (now %d): %s", self.pool_name, current, target, after, reason
            )

    def _ask_modifier(self, stats: PoolStats, now: float) -> tuple[int, str] | None:
        """The modifier's verdict as (target, reason), or None to keep the previous target."""
        assert self.modifier is not None
        call = self._call
        if call is not None and not call.done.is_set():
            running = now - call.started
            if running > self.config.callback_timeout and not call.hang_reported:
                call.hang_reported = True
                self._fault("hang", f"still running after {running:.1f} s; keeping {self.target}")
            return None
        if call is None:
            args = (self.target, stats) if self._modifier_gets_stats else (self.target,)
            call = self._call = _Call(self.modifier, args, now)
            call.done.wait(INLINE_WAIT)
            if not call.done.is_set():
                return None  # answered on a later tick
        self._call = None
        return self._judge(call)

    def _judge(self, call: _Call) -> tuple[int, str] | None:
        previous = self.target
        if call.error is not None:
            self._fault("exception", call.error, exc_info=call.error)
            return None
        value = call.value
        if value is None:
            self._fault("none", value)
            return None
        try:
            if isinstance(value, bool):
                raise TypeError
            n = operator.index(value)
        except TypeError:
            self._fault("not_int", value)
            return None
        p = self.policy
        if n < 0:
            self._fault("negative", n)
            return p.min, f"callback returned {n}: negative, clamped to min {p.min}"
        if n > p.max:
            self._fault("above_max", n)
            return p.max, f"callback returned {n}, clamped to max {p.max}"
        if n < p.min:
            self._fault("below_min", n)
            return p.min, f"callback returned {n}, clamped to min {p.min}"
        return n, f"callback returned {n} (was {previous})"

    def _fault(self, kind: str, value: Any, exc_info: Any = None) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1
        if kind in self._logged:
            return
        self._logged.add(kind)  # each kind is logged once; stats count every one
        where = f"modifier {_name(self.modifier)}" if self.modifier else "autoscaler"
        logger.warning(
            "taskpool: %s pool %s fault %r: %s (logged once; counted in inspect stats)",
            self.pool_name,
            where,
            kind,
            _short(value),
            exc_info=exc_info,
        )

    # -- measuring -----------------------------------------------------------------------------
    def _snapshot(self, now: float, current: int, sample: bool) -> PoolStats:
        # A batch takes one pool slot for all its inputs: count each batch once.
        active_discount, reserved_discount = batch_discount(self.worker, incoming=self._incoming)
        active = len(worker_state.active_requests) - active_discount
        # Requests the admission gate holds are reserved too, but they wait for slots, not for
        # pool capacity: count them apart so they do not make the pool grow.
        waiting = waiting_count_of(self.worker)
        reserved = max(
            0,
            len(worker_state.reserved_requests)
            - len(worker_state.active_requests)
            - waiting
            - reserved_discount,
        )
        arrivals_rate, mean_runtime = 0.0, None
        if sample:
            self._queue_depth = self._read_queue_depth()
            completed = sum(worker_state.total_count.values()) - active
            self._samples.append((now, self._arrivals, completed, active))
            while len(self._samples) > 2 and self._samples[1][0] <= now - RATE_WINDOW:
                self._samples.popleft()
        if len(self._samples) >= 2:
            (t0, a0, c0, _), (t1, a1, c1, _) = self._samples[0], self._samples[-1]
            span = t1 - t0
            if span > 0:
                arrivals_rate = (a1 - a0) / span
                done = c1 - c0
                if done > 0:
                    busy = sum(s[3] for s in list(self._samples)[1:]) / (len(self._samples) - 1)
                    mean_runtime = busy / (done / span)
        cpu = self._cpu_utilisation(now, current) if sample and self.policy.target_cpu else None
        return PoolStats(
            pool=self.pool_name,
            current=current,
            active=active,
            reserved=reserved,
            queue_depth=self._queue_depth,
            arrivals_per_second=round(arrivals_rate, 3),
            mean_runtime=None if mean_runtime is None else round(mean_runtime, 4),
            slots_waiting=waiting,
            cpu_utilisation=cpu if cpu is not None else (self.stats.cpu_utilisation if self.stats else None),
            at=time.time(),
        )

    def _read_queue_depth(self) -> int:
        if self._redis is None or not self._queue_keys:
            return 0
        try:
            pipe = self._redis.pipeline(transaction=False)
            for key in self._queue_keys:
                pipe.llen(key)
            return int(sum(pipe.execute()))
        except Exception as exc:  # Redis away: keep the last figure, say so once
            self._fault("queue_depth", exc)
            return self._queue_depth

    def _cpu_utilisation(self, now: float, current: int) -> float | None:
        """prefork: CPU seconds the children used since the last tick, per process and second."""
        # billiard keeps its processes in Pool._pool; there is no public list of child pids.
        procs = getattr(getattr(self.pool, "_pool", None), "_pool", None) or []
        cpu: dict[int, float] = {}
        for proc in procs:
            used = _cpu_seconds(getattr(proc, "pid", None))
            if used is not None:
                cpu[proc.pid] = used
        previous, self._cpu, elapsed = self._cpu, cpu, now - self._cpu_at
        self._cpu_at = now
        if not previous or elapsed <= 0 or current <= 0:
            return None
        delta = sum(cpu[pid] - previous[pid] for pid in cpu if pid in previous)
        return round(max(0.0, min(1.0, delta / (elapsed * current))), 3)

    # -- changing the pool ---------------------------------------------------------------------
    def _idle(self, current: int) -> int:
        idle = getattr(self.pool, "idle", None)  # taskpool's threads pool knows exactly
        if isinstance(idle, int):
            return idle
        # gevent: Celery's pool wraps a gevent.pool.Pool in the private _pool attribute.
        free_count = getattr(getattr(self.pool, "_pool", None), "free_count", None)
        if self.pool_name == "gevent" and callable(free_count):
            return int(free_count())
        return max(0, current - (len(worker_state.active_requests) - batch_discount(self.worker)[0]))

    def _grow(self, n: int) -> None:
        try:
            self.pool.grow(n)
            self.pool.maintain_pool()  # prefork starts the new children now
        except Exception as exc:
            self._fault("grow", exc, exc_info=True)
        self._sync_limit()

    def _shrink(self, n: int) -> None:
        # One at a time: billiard shrinks what it can, then raises ValueError for the rest.
        for _ in range(n):
            try:
                self.pool.shrink(1)
            except ValueError:
                break  # everything busy: a later tick tries again
            except Exception as exc:
                self._fault("shrink", exc, exc_info=True)
                break
        self._sync_limit()

    def _sync_limit(self) -> None:
        # Celery's prefork pool reports ``limit`` as max-concurrency but billiard grows without it.
        with contextlib.suppress(Exception):  # a pool without a settable limit keeps its own figure
            self.pool.limit = self.pool.num_processes

    def _update_consumer_prefetch_count_from(self, old: int, new: int) -> None:
        consumer = getattr(self.worker, "consumer", None)
        if consumer is not None and getattr(consumer, "qos", None) is not None:
            consumer._update_prefetch_count(new - old)

    def _policy_words(self) -> str:
        p = self.policy
        if p.min == p.max:
            return "fixed size (set TASKPOOL_AUTOSCALE_<POOL> or --autoscale to scale)"
        extra = f", target cpu {p.target_cpu:.0%}" if p.target_cpu else ""
        return f"policy buffer {p.buffer}, cooldown {p.cooldown:g} s{extra}"


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _pool_name(worker: Any, pool: Any) -> str:
    for candidate in (getattr(worker, "pool_cls", None), type(pool) if pool is not None else None):
        if candidate is not None:
            try:
                return pool_of_worker(candidate)
            except ConfigurationError:
                continue
    return "prefork"


def _queue_probe(app: Any) -> tuple[redis.Redis | None, list[str]]:
    """A Redis client with short timeouts (the hub must not hang) and the keys of the consumed queues."""
    try:
        url = app.conf.broker_url
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        names = sorted(app.amqp.queues.consume_from or ())
    except Exception:
        return None, []
    keys = [key for name in names for key in redis_queue_keys(name)]
    return client, keys


# -- wiring --------------------------------------------------------------------------------------
def configure_worker(app: App, worker: Any) -> None:
    """At ``worker_init``: swap in taskpool's threads and prefork pools, turn the autoscaler on.

    ``worker.options`` is the dict Celery later passes to the blueprint, so setting
    ``autoscale`` there creates the autoscaler as ``--autoscale`` would.
    """
    pool_cls = worker.pool_cls
    if isinstance(pool_cls, str):
        from celery import concurrency

        pool_cls = concurrency.get_implementation(pool_cls)
    path = f"{getattr(pool_cls, '__module__', '')}:{getattr(pool_cls, '__qualname__', '')}"
    if path == CELERY_THREADS_POOL:
        pool_cls = worker.pool_cls = symbol_by_name(THREADS_POOL)
    if path == CELERY_PREFORK_POOL:  # notices a killed child at once (see taskpool/pools/prefork.py)
        pool_cls = worker.pool_cls = symbol_by_name(PREFORK_POOL)
    if path == CELERY_SOLO_POOL:
        worker.concurrency = 1  # what solo runs, whatever -c says (the banner showed the CPU count)
        return  # one task at a time by definition: nothing to scale
    try:
        scaler_cls = symbol_by_name(worker.autoscaler_cls)
    except Exception:
        return
    if not (isinstance(scaler_cls, type) and issubclass(scaler_cls, CallbackAutoscaler)):
        return  # the project chose its own autoscaler: leave Celery's switches alone
    pool = pool_of_worker(pool_cls)
    config = AutoscaleConfig.from_env(pool, conf=app.conf)
    modifier = app.concurrency_modifiers.get(pool)
    if modifier is None and config.modifier is not None:
        modifier = config.modifier if callable(config.modifier) else symbol_by_name(config.modifier)
    given = worker.options.get("autoscale")
    if given:
        high, low = parse_bounds(given)
        low = 0 if low is None else low  # Celery's meaning of --autoscale=N
    elif config.max is not None:
        high, low = config.max, config.min if config.min is not None else 1
    else:
        concurrency = worker.concurrency
        if not isinstance(concurrency, int):
            logger.warning("taskpool: worker_concurrency=%r: autoscaler off, set --autoscale", concurrency)
            return
        high, low = concurrency, (1 if modifier is not None else concurrency)
    ceiling = MAX_CONCURRENCY[pool]
    if high > ceiling:
        logger.warning(
            "taskpool: autoscale max %d is above the %s pool's ceiling; using %d (run more workers instead)",
            high,
            pool,
            ceiling,
        )
        high = ceiling
    low = max(1, min(low, high))
    worker.options["autoscale"] = [high, low]
    worker.taskpool_autoscale = WorkerSetup(app, replace(config, max=high, min=low), modifier)


@control_command(
    args=[("pool", str), ("min", int), ("max", int), ("buffer", int), ("cooldown", float)],
    signature="[pool] [min] [max] [buffer] [cooldown]",
)
def taskpool_scale(
    state: Any,
    pool: str | None = None,
    min: int | None = None,
    max: int | None = None,
    buffer: int | None = None,
    cooldown: float | None = None,
    **_: Any,
) -> Any:
    """Update a taskpool worker's autoscaler at runtime (``taskpool scale``)."""
    scaler = state.consumer.controller.autoscaler
    if not isinstance(scaler, CallbackAutoscaler):
        return nok("no taskpool autoscaler on this worker")
    if pool and pool != scaler.pool_name:
        return ok(f"skipped: a {scaler.pool_name} worker")
    try:
        high, low, buf, cool = scaler.reconfigure(max=max, min=min, buffer=buffer, cooldown=cooldown)
    except ValueError as exc:
        return nok(str(exc))
    return ok(f"{scaler.pool_name}: min={low} max={high} buffer={buf} cooldown={cool:g}")


def scale_workers(
    app: Any,
    pool: str,
    *,
    min: int | None = None,
    max: int | None = None,
    buffer: int | None = None,
    cooldown: float | None = None,
    destination: list[str] | None = None,
    timeout: float = 1.0,
) -> dict[str, dict[str, str]]:
    """Send ``taskpool_scale`` to running workers; returns {worker: {"ok"|"error": text}} of ``pool``'s."""
    arguments = {"pool": pool, "min": min, "max": max, "buffer": buffer, "cooldown": cooldown}
    replies = app.control.broadcast(
        "taskpool_scale",
        arguments={k: v for k, v in arguments.items() if v is not None},
        destination=destination,
        reply=True,
        timeout=timeout,
    )
    out: dict[str, dict[str, str]] = {}
    for reply in replies or []:
        for worker, answer in reply.items():
            if str(answer.get("ok", "")).startswith("skipped"):
                continue
            out[worker] = answer
    return out
