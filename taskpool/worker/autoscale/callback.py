"""The user's concurrency modifier, asked on threads of its own and its answers judged.

A callback that raises, hangs or returns nonsense never stops the worker: each call runs on a
daemon thread, a tick waits for it at most :data:`INLINE_WAIT` seconds, a late answer is taken at
a later tick, and every bad answer is reported as a fault (kind, value) and ignored or clamped.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable
from typing import Any

from taskpool.core.policy import PoolStats
from taskpool.worker.autoscale.registry import wants_stats

#: How long a tick waits for the callback's answer before moving on (keeps the hub responsive).
INLINE_WAIT = 0.05

#: ``fault(kind, value, exc_info=None)``: how the autoscaler hears of a callback's misbehaviour.
Fault = Callable[..., None]


class Call:
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


class ModifierCaller:
    """Asks ``fun(current)`` or ``fun(current, stats)`` for a pool size, one call at a time.

    Args:
        fun: the pool's concurrency modifier.
        timeout: seconds after which a running call counts as hanging (reported once per call).
        fault: called with (kind, value[, exc_info=...]) for each misbehaviour.
    """

    def __init__(self, fun: Callable[..., Any], *, timeout: float, fault: Fault) -> None:
        self.fun = fun
        self.timeout = timeout
        self._fault = fault
        self._gets_stats = wants_stats(fun)
        self._call: Call | None = None

    def ask(
        self, target: int, stats: PoolStats, now: float, *, low: int, high: int
    ) -> tuple[int, str] | None:
        """The modifier's verdict as (target, reason), or None to keep the previous ``target``."""
        call = self._call
        if call is not None and not call.done.is_set():
            running = now - call.started
            if running > self.timeout and not call.hang_reported:
                call.hang_reported = True
                self._fault("hang", f"still running after {running:.1f} s; keeping {target}")
            return None
        if call is None:
            args = (target, stats) if self._gets_stats else (target,)
            call = self._call = Call(self.fun, args, now)
            call.done.wait(INLINE_WAIT)
            if not call.done.is_set():
                return None  # answered on a later tick
        self._call = None
        return self._judge(call, target, low, high)

    def _judge(self, call: Call, previous: int, low: int, high: int) -> tuple[int, str] | None:
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
        if n < 0:
            self._fault("negative", n)
            return low, f"callback returned {n}: negative, clamped to min {low}"
        if n > high:
            self._fault("above_max", n)
            return high, f"callback returned {n}, clamped to max {high}"
        if n < low:
            self._fault("below_min", n)
            return low, f"callback returned {n}, clamped to min {low}"
        return n, f"callback returned {n} (was {previous})"
