"""LeaseKeeper: one daemon thread per process that renews every held lease every ttl/3."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from taskpool.stores.semaphores.semaphore import Lease, LeaseLost, Semaphore

log = logging.getLogger(__name__)

OnLost = Callable[[Lease, LeaseLost], None]


@dataclass
class _Entry:
    semaphore: Semaphore
    lease: Lease
    due: float  # time.monotonic() of the next renewal
    suspect: LeaseLost | None = None  # renewal found it gone; reported unless removed within grace


class LeaseKeeper:
    """Renews registered leases every ``ttl / 3`` of their semaphore; reports lost ones loudly.

    A lost lease is logged at ERROR, dropped, and passed to ``on_lost`` (say, to cancel the
    task that relied on it). A Redis error is logged and the renewal retried soon; the lease
    is reported lost only when Redis says so.

    Call :meth:`remove` before :meth:`Semaphore.release`, so a renewal racing the release is
    not reported as a loss. With ``grace`` > 0, a lease whose renewal finds it gone is reported
    only if it is still registered ``grace`` seconds later: for leases another process may
    release first (taskpool's pool processes free their slots when the task function returns,
    before the main process hears of it and removes the lease here).
    """

    def __init__(
        self, on_lost: OnLost | None = None, *, name: str = "taskpool-lease-keeper", grace: float = 0.0
    ) -> None:
        self.on_lost = on_lost
        self.grace = grace
        self._name = name
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LeaseKeeper:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def add(self, semaphore: Semaphore, lease: Lease) -> None:
        """Keep ``lease`` (a grant of ``semaphore``) renewed until :meth:`remove`."""
        with self._lock:
            self._entries[lease.token] = _Entry(semaphore, lease, time.monotonic() + semaphore.ttl / 3)
        self._changed.set()

    def remove(self, lease: Lease) -> None:
        """Stop renewing ``lease`` (unknown leases are ignored)."""
        with self._lock:
            self._entries.pop(lease.token, None)

    def leases(self) -> list[Lease]:
        with self._lock:
            return [entry.lease for entry in self._entries.values()]

    def start(self) -> LeaseKeeper:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (leases stay held until released or expired)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            self._changed.set()
            thread.join(timeout)

    def renew_due(self, now: float | None = None) -> float:
        """Renew the leases that are due; returns seconds until the next one is due."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [entry for entry in self._entries.values() if entry.due <= now]
        for entry in due:
            period = entry.semaphore.ttl / 3
            if entry.suspect is not None:
                self._lost(entry, entry.suspect)  # still held here after the grace period
                continue
            try:
                entry.semaphore.renew(entry.lease)
            except LeaseLost as exc:
                if self.grace > 0:
                    entry.suspect = exc
                    entry.due = time.monotonic() + self.grace
                else:
                    self._lost(entry, exc)
                continue
            except redis.RedisError as exc:
                # Redis may be restarting; the lease is not known lost, so retry well within the ttl.
                log.warning(
                    "could not renew lease %s of %r: %s", entry.lease.token, entry.semaphore.name, exc
                )
                period = min(period, entry.semaphore.ttl / 10)
            entry.due = time.monotonic() + period
        with self._lock:
            dues = [entry.due for entry in self._entries.values()]
        return max(0.0, min(dues) - time.monotonic()) if dues else 3600.0

    def _lost(self, entry: _Entry, exc: LeaseLost) -> None:
        with self._lock:
            if self._entries.get(entry.lease.token) is not entry:
                return  # removed while we renewed: released on purpose, not lost
            del self._entries[entry.lease.token]
        log.error("%s", exc)
        if self.on_lost is not None:
            try:
                self.on_lost(entry.lease, exc)
            except Exception:
                log.exception("on_lost callback failed for lease %s", entry.lease.token)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                wait = self.renew_due()
            except Exception:  # never let the renewal thread die silently
                log.exception("lease keeper pass failed")
                wait = 1.0
            self._changed.wait(wait)
            self._changed.clear()
