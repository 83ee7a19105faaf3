"""CallbackAutoscaler: Celery's ``Autoscaler`` driven by a callback or :class:`ScalingPolicy`.

Celery's ``WorkerComponent`` (``celery/worker/autoscale.py``) builds it from
``worker_autoscaler`` and calls it:

* on event-loop pools (prefork, threads): ``maybe_scale()`` from the hub timer every
  ``keepalive`` seconds (here the 1 s tick), and ``maybe_scale(req)`` for every task message
  (``consumer.on_task_message``, called by the task strategy);
* on pools without an event loop (gevent): ``body()`` in its autoscaler thread (a greenlet), and
  ``on_task_received(req)`` for every task message (``WorkerComponent.start`` adds it to
  ``consumer.on_task_message``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from celery.worker import state as worker_state
from celery.worker.autoscale import Autoscaler

from taskpool.compat.celery import gevent_free_slots, sync_pool_limit, update_prefetch_count
from taskpool.core.policy import PoolStats, ScalingPolicy
from taskpool.worker import readable
from taskpool.worker.admission import waiting_count_of
from taskpool.worker.autoscale.callback import ModifierCaller
from taskpool.worker.autoscale.config import MAX_CONCURRENCY, AutoscaleConfig, WorkerSetup
from taskpool.worker.autoscale.probes import CpuMeter, QueueProbe, pool_name_of
from taskpool.worker.autoscale.registry import name_of
from taskpool.worker.batching import batch_discount

logger = logging.getLogger("taskpool.autoscale")

#: Seconds between two ticks: the callback is asked at least this often.
TICK = 1.0
#: Seconds of history behind arrivals_per_second and mean_runtime.
RATE_WINDOW = 5.0
#: Decisions kept for ``inspect stats``.
HISTORY = 20


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
        self.config = setup.config if setup else AutoscaleConfig(pool=pool_name_of(worker, pool))
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
        self._caller = (
            ModifierCaller(self.modifier, timeout=self.config.callback_timeout, fault=self._fault)
            if self.modifier is not None
            else None
        )
        self.target = self.min_concurrency  # Celery starts the pool at min (not started yet here)
        self.faults: dict[str, int] = {}
        self._logged: set[str] = set()
        self.decisions: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.ticks = 0
        self.stats: PoolStats | None = None
        self._arrivals = 0
        self._samples: deque[tuple[float, int, int, int]] = deque()  # (t, arrivals, completed, active)
        self._queue_depth = 0
        self._incoming: Any = None  # the request Celery is handing on while it calls maybe_scale
        self._queues = QueueProbe.for_app(app) if app is not None else None
        self._cpu = CpuMeter()
        logger.info(
            "taskpool: autoscaler for %s pool: %s, min %d, max %d",
            self.pool_name,
            f"modifier {name_of(self.modifier)}" if self.modifier else self._policy_words(),
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
        """Every task message on pools without an event loop (gevent).

        Celery's ``WorkerComponent.start`` adds it to ``consumer.on_task_message`` when the
        worker has no event loop; the task strategy calls it with each new request.
        """
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
                update_prefetch_count(getattr(self.worker, "consumer", None), self.max_concurrency - old_max)
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
            "callback": name_of(self.modifier) if self.modifier else None,
            "current": self.processes,
            "target": self.target,
            "min": self.min_concurrency,
            "max": self.max_concurrency,
            "qty": self.qty,
            "buffer": self.policy.buffer,
            "cooldown": self.policy.cooldown,
            "target_cpu": self.policy.target_cpu,
            "last_decision": last,
            # For people (Flower's autoscaler panel): ["21:08:43  69 -> 10  no work; ..."]. A list of
            # one line: Flower shows a list of strings as is, while a string loses its "-" there.
            "last decision (readable)": [readable.decision_line(last)] if last else [],
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
        if self._caller is not None:
            if sample:
                p = self.policy
                asked = self._caller.ask(self.target, stats, now, low=p.min, high=p.max)
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

    def _fault(self, kind: str, value: Any, exc_info: Any = None) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1
        if kind in self._logged:
            return
        self._logged.add(kind)  # each kind is logged once; stats count every one
        where = f"modifier {name_of(self.modifier)}" if self.modifier else "autoscaler"
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
        cpu = self._cpu.sample(self.pool, now, current) if sample and self.policy.target_cpu else None
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
        if self._queues is None:
            return 0
        try:
            return self._queues.depth()
        except Exception as exc:  # Redis away: keep the last figure, say so once
            self._fault("queue_depth", exc)
            return self._queue_depth

    # -- changing the pool ---------------------------------------------------------------------
    def _idle(self, current: int) -> int:
        idle = getattr(self.pool, "idle", None)  # taskpool's threads pool knows exactly
        if isinstance(idle, int):
            return idle
        if self.pool_name == "gevent":
            free = gevent_free_slots(self.pool)
            if free is not None:
                return free
        return max(0, current - (len(worker_state.active_requests) - batch_discount(self.worker)[0]))

    def _grow(self, n: int) -> None:
        try:
            self.pool.grow(n)
            self.pool.maintain_pool()  # prefork starts the new children now
        except Exception as exc:
            self._fault("grow", exc, exc_info=True)
        sync_pool_limit(self.pool)

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
        sync_pool_limit(self.pool)

    def _policy_words(self) -> str:
        p = self.policy
        if p.min == p.max:
            return "fixed size (set TASKPOOL_AUTOSCALE_<POOL> or --autoscale to scale)"
        extra = f", target cpu {p.target_cpu:.0%}" if p.target_cpu else ""
        return f"policy buffer {p.buffer}, cooldown {p.cooldown:g} s{extra}"


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
