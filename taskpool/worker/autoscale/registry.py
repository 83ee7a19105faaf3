"""The concurrency modifiers users register (``@app.concurrency_modifier(pool=...)``), one per pool."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from taskpool.core.errors import ConfigurationError
from taskpool.core.settings import POOLS


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
                f"concurrency_modifier(pool={pool!r}): {name_of(f)} would replace {name_of(old)}; "
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


def name_of(fun: Any) -> str:
    """``module.qualname`` of a modifier, for logs, errors and ``inspect stats``."""
    return f"{getattr(fun, '__module__', '?')}.{getattr(fun, '__qualname__', repr(fun))}"
