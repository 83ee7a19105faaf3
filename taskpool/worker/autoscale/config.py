"""One pool's autoscaling settings (AutoscaleConfig) and the ceilings no setting may exceed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from taskpool.core.errors import ConfigurationError
from taskpool.core.policy import DEFAULT_BUFFER, DEFAULT_COOLDOWN
from taskpool.core.settings import POOLS, autoscale_settings

#: Default seconds a callback may run before it counts as hanging.
DEFAULT_CALLBACK_TIMEOUT = 2.0

#: The most slots an autoscaler may give one worker of each pool, whatever it is told (the
#: command line, TASKPOOL_AUTOSCALE_<POOL>, `taskpool scale`, `celery control autoscale`).
#: Beyond these a worker spends more on its slots than on its tasks: run more workers instead.
MAX_CONCURRENCY = {"prefork": 256, "threads": 512, "gevent": 10_000}


@dataclass(frozen=True)
class AutoscaleConfig:
    """One pool's autoscaling settings.

    Read by :meth:`from_env` (through :func:`taskpool.core.settings.autoscale_settings`) from
    ``TASKPOOL_AUTOSCALE_<POOL>`` (``"max,min"``), then ``TASKPOOL_AUTOSCALE_<POOL>_<NAME>`` over
    ``TASKPOOL_AUTOSCALE_<NAME>`` for ``BUFFER``, ``COOLDOWN``, ``TARGET_CPU`` and
    ``CALLBACK_TIMEOUT``, and the modifier's dotted path from
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
        return cls(pool=pool, **autoscale_settings(pool, environ, conf))


@dataclass
class WorkerSetup:
    """What :func:`~taskpool.worker.autoscale.configure_worker` hands the autoscaler through the
    worker (``worker.taskpool_autoscale``, set at ``worker_init``)."""

    app: Any
    config: AutoscaleConfig
    modifier: Callable[..., Any] | None
