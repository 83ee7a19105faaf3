"""What a task's limits mean in Redis: which semaphores it needs, and named limits' sizes."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import cast

import redis

from .errors import ConfigurationError
from .options import TaskOptions


@dataclass(frozen=True)
class Need:
    """``count`` slots of the semaphore ``name`` of ``capacity`` slots."""

    name: str
    capacity: int
    count: int
    kind: str  # "max_in_flight", "cluster_max_in_flight", "limit" or "gpu"


class LimitStore:
    """Sizes of named limits, in the Redis hash ``<keyspace>:limits`` (name -> slots)."""

    def __init__(self, client: redis.Redis, keyspace: str = "taskpool") -> None:
        self.client = client
        self.key = f"{keyspace}:limits"

    def set(self, name: str, size: int) -> None:
        if not name or not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ConfigurationError(f"limit {name!r}: size must be an integer >= 1, got {size!r}")
        self.client.hset(self.key, name, size)

    def remove(self, name: str) -> bool:
        return bool(self.client.hdel(self.key, name))

    def all(self) -> dict[str, int]:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.key))
        return {k.decode(): int(v) for k, v in raw.items()}

    def get_many(self, names: list[str]) -> dict[str, int | None]:
        values = cast(list[bytes | None], self.client.hmget(self.key, names))
        return {n: (int(v) if v is not None else None) for n, v in zip(names, values, strict=True)}


def machine_name() -> str:
    return socket.gethostname()


def gpu_count() -> int:
    """GPU slots of this host: ``TASKPOOL_GPUS``, else ``torch.cuda.device_count()``, else 0."""
    configured = os.environ.get("TASKPOOL_GPUS")
    if configured not in (None, ""):
        try:
            value = int(configured)
        except ValueError:
            value = -1
        if value < 0:
            raise ConfigurationError(f"TASKPOOL_GPUS={configured!r}: expected an integer >= 0")
        return value
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count())  # NVML only: CUDA is not initialised in this process


def needs_of(
    options: TaskOptions,
    *,
    node: str,
    limit_sizes: dict[str, int | None],
    gpus: int,
) -> list[Need]:
    """The semaphores a task needs on worker ``node``, in a fixed order.

    Raises:
        ConfigurationError: a named limit has no size (limits are strict), or the task wants
            more GPU slots than this host has.
    """
    task = options.task
    needs: list[Need] = []
    if options.max_in_flight:
        needs.append(Need(f"node:{node}:task:{task}", options.max_in_flight, 1, "max_in_flight"))
    if options.cluster_max_in_flight:
        needs.append(Need(f"task:{task}", options.cluster_max_in_flight, 1, "cluster_max_in_flight"))
    for raw_name, count in sorted(options.limits.items()):
        name = expand_limit_name(raw_name)
        size = limit_sizes.get(name)
        if size is None:
            raise ConfigurationError(
                f"task {task!r}: limit {name!r} has no size, so the task cannot run (limits are strict); "
                f"set it with `taskpool limits set {name} N`"
            )
        if count > size:
            raise ConfigurationError(
                f"task {task!r}: limits={{{raw_name!r}: {count}}} needs more slots than limit {name!r} "
                f"has ({size}); it could never run"
            )
        needs.append(Need(f"limit:{name}", size, count, "limit"))
    if options.gpu_slots:
        if options.gpu_slots > gpus:
            raise ConfigurationError(
                f"task {task!r}: gpu_slots={options.gpu_slots} but this host has {gpus} GPU slot(s) "
                "(set TASKPOOL_GPUS on a CPU machine)"
            )
        needs.append(Need(f"gpu:{machine_name()}", gpus, options.gpu_slots, "gpu"))
    return needs


def expand_limit_name(name: str) -> str:
    """``{hostname}`` in a limit's name stands for this machine (per-machine limits)."""
    return name.replace("{hostname}", machine_name())
