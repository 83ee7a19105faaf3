"""SIGTERM to the whole process group (systemd's default KillMode, some container runtimes):
prefork pool processes finish their task while the main process shuts down warm.

Celery resets SIGTERM to its default in pool processes and billiard then installs its own
handler (``billiard.common.reset_signals``, after the pool's initializer), so a SIGTERM that
reaches a pool process kills the task it runs: the main process's warm shutdown, which waits for
running tasks, had nothing left to wait for, and each task ran again elsewhere. billiard's
``REMAP_SIGTERM=SIGQUIT`` makes children ignore SIGTERM but turns the main process's SIGTERM into
a *cold* shutdown. Here a pool process that gets SIGTERM waits up to :data:`TERM_GRACE` seconds
for its main process to say which shutdown it is in (a shared byte, set from Celery's
``worker_shutting_down`` signal): warm, the pool process ignores the signal and finishes its
task; cold, or no shutdown at all (``revoke(terminate=True)``, billiard terminating a child),
it does what it would have done.
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import time
from typing import Any

from celery import signals

logger = logging.getLogger("taskpool.prefork")

#: Seconds a pool process given SIGTERM waits for its main process to name the shutdown.
TERM_GRACE = 0.5
RUNNING, WARM, COLD = 0, 1, 2

_state: dict[str, Any] = {}


def install() -> None:
    """In the worker's main process, before the pool forks: share the shutdown byte and listen."""
    if _state:
        return
    _state["shutdown"] = mmap.mmap(-1, 1)  # MAP_SHARED: the pool processes forked later see writes
    _state["main_pid"] = os.getpid()
    signals.worker_shutting_down.connect(_on_shutting_down, weak=False)
    signals.task_prerun.connect(_guard_pool_process, weak=False)


def shutdown_state() -> int:
    shared = _state.get("shutdown")
    return int(shared[0]) if shared is not None else RUNNING


def _on_shutting_down(sender: Any = None, how: str = "", **kwargs: Any) -> None:
    if os.getpid() == _state.get("main_pid"):
        _state["shutdown"][0] = WARM if how == "Warm" else COLD


def _guard_pool_process(**kwargs: Any) -> None:
    """At a pool process's first task (after billiard set its handlers): wrap its SIGTERM handler."""
    if os.getpid() == _state.get("main_pid"):
        return  # not a pool process
    current = signal.getsignal(signal.SIGTERM)
    if getattr(current, "taskpool_guard", False):
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        deadline = time.monotonic() + TERM_GRACE
        while shutdown_state() == RUNNING and time.monotonic() < deadline:
            time.sleep(0.01)
        if shutdown_state() == WARM:
            logger.warning("taskpool: SIGTERM during a warm shutdown: this pool process finishes its task")
            return
        if callable(current):
            current(signum, frame)
        else:  # SIG_DFL
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    on_sigterm.taskpool_guard = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, on_sigterm)
