"""What the autoscaler measures outside Celery's counters: the queues' depth in Redis, the
prefork children's CPU use, and which taskpool pool a worker runs."""

from __future__ import annotations

import os
from typing import Any

import redis

from taskpool.client.routing import pool_of_worker
from taskpool.compat.billiard import child_pids
from taskpool.compat.celery import inner_pool
from taskpool.core.errors import ConfigurationError
from taskpool.core.names import queue_keyprefix
from taskpool.stores.queues import queue_depths
from taskpool.stores.redis_client import redis_client

#: Socket timeouts of the queue probe's Redis client, in seconds: the hub must not hang on Redis.
PROBE_TIMEOUT = 0.5


class QueueProbe:
    """Messages waiting in the queues a worker consumes (every priority step, kombu's
    ``global_keyprefix`` honoured), read in one round trip."""

    def __init__(self, client: redis.Redis, queues: list[str], *, keyprefix: str = "") -> None:
        self.client = client
        self.queues = queues
        self.keyprefix = keyprefix

    @classmethod
    def for_app(cls, app: Any) -> QueueProbe | None:
        """A probe of the app's consumed queues on the broker's Redis; None when there is nothing to read."""
        try:
            client = redis_client(
                app.conf.broker_url,
                app.conf.broker_transport_options,
                socket_timeout=PROBE_TIMEOUT,
                socket_connect_timeout=PROBE_TIMEOUT,
            )
            names = sorted(app.amqp.queues.consume_from or ())
            keyprefix = queue_keyprefix(app.conf.broker_transport_options)
        except Exception:
            return None
        return cls(client, names, keyprefix=keyprefix) if names else None

    def depth(self) -> int:
        """Raises ``redis.RedisError`` when Redis cannot be reached."""
        return sum(queue_depths(self.client, self.queues, keyprefix=self.keyprefix).values())


class CpuMeter:
    """prefork: the children's CPU use per process and second between two looks (0-1)."""

    def __init__(self) -> None:
        self._cpu: dict[int, float] = {}
        self._at = 0.0

    def sample(self, pool: Any, now: float, current: int) -> float | None:
        """None at the first look, or when nothing could be measured."""
        cpu: dict[int, float] = {}
        for pid in child_pids(inner_pool(pool)):
            used = cpu_seconds(pid)
            if used is not None:
                cpu[pid] = used
        previous, self._cpu, elapsed = self._cpu, cpu, now - self._at
        self._at = now
        if not previous or elapsed <= 0 or current <= 0:
            return None
        delta = sum(cpu[pid] - previous[pid] for pid in cpu if pid in previous)
        return round(max(0.0, min(1.0, delta / (elapsed * current))), 3)


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``); None when unknown."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def pool_name_of(worker: Any, pool: Any) -> str:
    """The taskpool pool of ``worker`` (its pool class, else the pool's type); prefork if unknown."""
    for candidate in (getattr(worker, "pool_cls", None), type(pool) if pool is not None else None):
        if candidate is not None:
            try:
                return pool_of_worker(candidate)
            except ConfigurationError:
                continue
    return "prefork"
