"""TaskOptions: one frozen, validated record of a task's taskpool options.

Everything is checked when the task is declared, so a typo fails at import with the
task's name, the option and the value in the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celery.app.task import Task as CeleryTask

from taskpool.core import backoff, batch, limits, rates
from taskpool.core.batch import Batch
from taskpool.core.checks import option_error
from taskpool.core.errors import ConfigurationError
from taskpool.core.settings import POOLS

#: Each feature owns its task options: their names and the check that turns them into fields
#: of :class:`TaskOptions` (``validate(task, options, pool=..., visibility_timeout=...)``).
FEATURES = (backoff, limits, rates, batch)


#: taskpool's own options (``pool`` defaults to the app's setting).
TASKPOOL_OPTIONS = ("pool", *(name for feature in FEATURES for name in feature.OPTIONS))

#: Kept for code that imported it from here.
DEFAULT_BACKOFF_MAX = backoff.DEFAULT_BACKOFF_MAX

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
        cluster_max_in_flight: at most this many run at once across all workers (per key with
            ``cluster_key``).
        cluster_key: a keyed name like ``{tenant_id}``: ``cluster_max_in_flight`` holds per key.
        limits: named limit -> slots each run occupies.
        gpu_slots: GPU slots of its host each run holds.
        rates: rate name -> Celery-style rate ("600/m"), enforced across all workers.
        batch: collect inputs into lists (:class:`~taskpool.core.batch.Batch`); limits and GPU
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
    cluster_key: str | None = None
    limits: Mapping[str, int] = field(default_factory=dict)
    gpu_slots: int = 0
    rates: Mapping[str, str] = field(default_factory=dict)
    batch: Batch | None = None

    @property
    def has_limits(self) -> bool:
        """Whether requests must pass the admission gate."""
        return bool(
            self.max_in_flight or self.cluster_max_in_flight or self.limits or self.gpu_slots or self.rates
        )

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
        pool = o["pool"]
        if pool not in POOLS:
            raise option_error(
                task, "pool", pool, f"is not a pool; expected one of {', '.join(map(repr, POOLS))}"
            )
        fields: dict[str, Any] = {}
        for feature in FEATURES:
            fields.update(feature.validate(task, o, pool=pool, visibility_timeout=visibility_timeout))
        return cls(task=task, pool=pool, **fields)


def _is_celery_task_attribute(key: str) -> bool:
    return not key.startswith("_") and hasattr(CeleryTask, key) and not callable(getattr(CeleryTask, key))
