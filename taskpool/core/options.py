"""TaskOptions: one frozen, validated record of a task's taskpool options.

Everything is checked when the task is declared, so a typo fails at import with the
task's name, the option and the value in the message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celery.app.task import Task as CeleryTask

from taskpool.core.errors import ConfigurationError
from taskpool.core.settings import POOLS


@dataclass(frozen=True)
class Batch:
    """How a batched task collects its inputs.

    Attributes:
        max_size: most inputs per call of the function (>= 1).
        wait_ms: longest wait after the first input of a batch before the function is called
            with what has arrived (>= 0 milliseconds).
    """

    max_size: int = 32
    wait_ms: float = 100.0


#: taskpool's own options and their defaults (``pool`` defaults to the app's setting).
TASKPOOL_OPTIONS = (
    "pool",
    "retries",
    "backoff",
    "backoff_max",
    "jitter",
    "retry_on",
    "max_in_flight",
    "cluster_max_in_flight",
    "limits",
    "gpu_slots",
    "batch",
)

#: Cap of a single retry wait when the task does not set ``backoff_max``, seconds (at most
#: half the broker's visibility timeout).
DEFAULT_BACKOFF_MAX = 120.0

#: Celery options that taskpool owns under another name: using them would bypass it.
REPLACED_OPTIONS = {
    "queue": "pool",
    "autoretry_for": "retry_on",
    "max_retries": "retries",
    "retry_backoff": "backoff",
    "retry_backoff_max": "backoff_max",
    "retry_jitter": "jitter",
    "default_retry_delay": "backoff",
}

#: Options Celery's ``app.task`` decorator takes that are not Task attributes.
_CELERY_DECORATOR_OPTIONS = {"name", "bind", "base", "shared", "lazy", "filter", "serializer"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TaskOptions:
    """taskpool's options of one task, validated.

    Attributes:
        task: the task's name (used in every error message).
        pool: "prefork", "threads" or "gevent": which workers run it.
        retries: extra attempts after the first (0: no retry).
        backoff: seconds before the first retry; each next waits twice as long.
        backoff_max: cap of a single wait, seconds (default 120, or half the visibility
            timeout when that is shorter).
        jitter: full jitter: the wait is uniform in [0, capped backoff].
        retry_on: exception types that trigger a retry.
        max_in_flight: at most this many run at once on one worker node.
        cluster_max_in_flight: at most this many run at once across all workers.
        limits: named limit -> slots each run occupies.
        gpu_slots: GPU slots of its host each run holds.
        batch: collect inputs into lists (:class:`~taskpool.batching.Batch`); limits and GPU
            slots are then taken once per batch.
    """

    task: str
    pool: str
    retries: int = 0
    backoff: float = 1.0
    backoff_max: float = 120.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    max_in_flight: int | None = None
    cluster_max_in_flight: int | None = None
    limits: Mapping[str, int] = field(default_factory=dict)
    gpu_slots: int = 0
    batch: Batch | None = None

    @property
    def has_limits(self) -> bool:
        """Whether requests must pass the admission gate."""
        return bool(self.max_in_flight or self.cluster_max_in_flight or self.limits or self.gpu_slots)

    @classmethod
    def from_decorator(
        cls,
        task: str,
        options: Mapping[str, Any],
        *,
        default_pool: str,
        visibility_timeout: float,
    ) -> tuple[TaskOptions, dict[str, Any]]:
        """Split decorator keywords into taskpool's record and the options Celery keeps.

        Raises:
            ConfigurationError: an unknown option, a wrong type or an impossible value.
        """
        ours: dict[str, Any] = {}
        celery_opts: dict[str, Any] = {}
        for key, value in options.items():
            if key in TASKPOOL_OPTIONS:
                ours[key] = value
            elif key in REPLACED_OPTIONS:
                raise ConfigurationError(
                    f"task {task!r}: option {key}={value!r} is managed by taskpool; "
                    f"use {REPLACED_OPTIONS[key]}= instead"
                )
            elif key in _CELERY_DECORATOR_OPTIONS or _is_celery_task_attribute(key):
                celery_opts[key] = value
            else:
                raise ConfigurationError(
                    f"task {task!r}: unknown option {key}={value!r}; taskpool options are "
                    f"{', '.join(TASKPOOL_OPTIONS)}, or any Celery task option"
                )
        ours.setdefault("pool", default_pool)
        record = cls._validated(task, ours, visibility_timeout)
        return record, celery_opts

    @classmethod
    def _validated(cls, task: str, o: dict[str, Any], visibility_timeout: float) -> TaskOptions:
        def bad(option: str, value: Any, why: str) -> ConfigurationError:
            return ConfigurationError(f"task {task!r}: {option}={value!r} {why}")

        pool = o["pool"]
        if pool not in POOLS:
            raise bad("pool", pool, f"is not a pool; expected one of {', '.join(map(repr, POOLS))}")
        retries = o.get("retries", 0)
        if not _is_int(retries) or retries < 0:
            raise bad("retries", retries, "must be an integer >= 0")
        backoff = o.get("backoff", 1.0)
        if not _is_number(backoff) or backoff < 0:
            raise bad("backoff", backoff, "must be a number of seconds >= 0")
        if backoff >= visibility_timeout:
            raise bad(
                "backoff",
                backoff,
                f"must stay below the broker's visibility timeout ({visibility_timeout:g} s), "
                "or a waiting retry is delivered twice",
            )
        # The default cap stays below the visibility timeout on its own; an explicit one must.
        backoff_max = o.get("backoff_max", min(DEFAULT_BACKOFF_MAX, visibility_timeout / 2))
        if not _is_number(backoff_max) or backoff_max < 0:
            raise bad("backoff_max", backoff_max, "must be a number of seconds >= 0")
        if "backoff_max" not in o and backoff_max < backoff:
            backoff_max = backoff
        if backoff_max < backoff:
            raise bad("backoff_max", backoff_max, f"is below backoff={backoff!r}; it caps every wait")
        if backoff_max >= visibility_timeout:
            raise bad(
                "backoff_max",
                backoff_max,
                f"must stay below the broker's visibility timeout ({visibility_timeout:g} s), "
                "or a waiting retry is delivered twice; raise TASKPOOL_VISIBILITY_TIMEOUT or lower it",
            )
        jitter = o.get("jitter", True)
        if not isinstance(jitter, bool):
            raise bad("jitter", jitter, "must be True or False")
        retry_on = o.get("retry_on", (Exception,))
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        if (
            not isinstance(retry_on, (tuple, list))
            or not retry_on
            or not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on)
        ):
            raise bad("retry_on", retry_on, "must be an exception class or a tuple of them")
        for option in ("max_in_flight", "cluster_max_in_flight"):
            value = o.get(option)
            if value is not None and (not _is_int(value) or value < 1):
                raise bad(option, value, "must be an integer >= 1")
        limits = o.get("limits") or {}
        if not isinstance(limits, Mapping):
            raise bad("limits", limits, 'must map limit names to slots, like {"license:matlab": 1}')
        for name, slots in limits.items():
            if (
                not isinstance(name, str)
                or not name.strip()
                or "{" in name.replace("{hostname}", "")
                or "}" in name.replace("{hostname}", "")
            ):
                raise bad(
                    "limits",
                    dict(limits),
                    f"has an invalid limit name {name!r} (non-empty; braces only in {{hostname}})",
                )
            if not _is_int(slots) or slots < 1:
                raise bad(
                    "limits", dict(limits), f"gives limit {name!r} {slots!r} slots; need an integer >= 1"
                )
        gpu_slots = o.get("gpu_slots", 0)
        if not _is_int(gpu_slots) or gpu_slots < 0:
            raise bad("gpu_slots", gpu_slots, "must be an integer >= 1")
        if gpu_slots and pool == "gevent":
            raise bad(
                "gpu_slots",
                gpu_slots,
                f"needs pool 'prefork' or 'threads', got {pool!r} "
                "(CPU-bound work stalls the gevent hub and its lease renewal)",
            )
        batch = o.get("batch")
        if batch is not None:
            if not isinstance(batch, Batch):
                raise bad("batch", batch, "must be a taskpool.batching.Batch(max_size=..., wait_ms=...)")
            if not _is_int(batch.max_size) or batch.max_size < 1:
                raise bad("batch", batch, "needs max_size, an integer >= 1")
            if not _is_number(batch.wait_ms) or batch.wait_ms < 0:
                raise bad("batch", batch, "needs wait_ms, a number of milliseconds >= 0")
            if batch.wait_ms / 1000.0 >= visibility_timeout:
                raise bad(
                    "batch", batch, f"waits past the broker's visibility timeout ({visibility_timeout:g} s)"
                )
        return cls(
            task=task,
            pool=pool,
            retries=retries,
            backoff=float(backoff),
            backoff_max=float(backoff_max),
            jitter=jitter,
            retry_on=tuple(retry_on),
            max_in_flight=o.get("max_in_flight"),
            cluster_max_in_flight=o.get("cluster_max_in_flight"),
            limits=dict(limits),
            gpu_slots=gpu_slots,
            batch=batch,
        )


def _is_celery_task_attribute(key: str) -> bool:
    return not key.startswith("_") and hasattr(CeleryTask, key) and not callable(getattr(CeleryTask, key))
