"""Results that do not copy large arguments: ``result_extended`` keeps args and kwargs in each
result, which for a 10 MB argument means a 10 MB result key kept for ``result_expires``.

:func:`bounded` gives a result backend class whose stored ``args``/``kwargs`` are replaced by a
marker string when their JSON form is longer than ``TASKPOOL_RESULT_ARGS_MAX_SIZE`` (0: keep
them whatever their size). The task itself still gets its arguments; only the copy in the
result is left out.

Its result consumer (what a client's ``.delay()`` and ``.get()`` use) gives up on an unreachable
Redis with :class:`~taskpool.core.errors.ResultBackendUnreachable`: one line naming the backend's URL
(password masked) and what to check, instead of Celery's "Retry limit exceeded while trying to
reconnect to the Celery result store backend".
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from celery.backends.redis import RedisBackend
from celery.backends.redis import ResultConsumer as RedisResultConsumer

from taskpool.compat.celery import ReconnectFailureHook
from taskpool.core.errors import ResultBackendUnreachable
from taskpool.core.settings import mask_url


def marker(field: str, size: int, limit: int) -> str:
    return (
        f"[taskpool: {field} left out of the result: {size:,} bytes, above "
        f"TASKPOOL_RESULT_ARGS_MAX_SIZE={limit:,}]"
    )


def json_size(value: Any) -> int:
    if isinstance(value, (bytes, str)):
        return len(value)
    return len(json.dumps(value, default=str))


class BoundedArgs:
    """Mixin for a Celery result backend: large args and kwargs stay out of the stored result."""

    app: Any

    def _get_result_meta(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        meta: dict[str, Any] = super()._get_result_meta(*args, **kwargs)  # type: ignore[misc]
        limit = self.app.settings.result_args_max_size
        if not limit:
            return meta
        for field in ("args", "kwargs"):
            value = meta.get(field)
            if value:
                size = json_size(value)
                if size > limit:
                    text = marker(field, size, limit)
                    meta[field] = self.encode(text) if isinstance(value, bytes) else text  # type: ignore[attr-defined]
        return meta


def unreachable_backend_message(url: str | None, exc: BaseException, retries: object) -> str:
    """One line: what failed, where (password masked), what to check."""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    password = urlsplit(url).password if url else None
    if password:
        detail = detail.replace(password, "**")
    where = f"Redis at {mask_url(url)}" if url else "Redis"
    return (
        f"cannot reach the result backend, {where} ({detail}); gave up after {retries} retries. "
        "Check that Redis runs there and that TASKPOOL_RESULT_BACKEND (else TASKPOOL_BROKER_URL, "
        "else the app's result_backend) names it."
    )


class ResultConsumer(ReconnectFailureHook, RedisResultConsumer):
    """Celery's Redis result consumer; giving up on an unreachable Redis says so in one line."""

    def on_reconnect_failed(self, exc: BaseException) -> None:
        backend = self.backend
        retries = backend.retry_policy.get("max_retries")
        raise ResultBackendUnreachable(unreachable_backend_message(backend.url, exc, retries)) from exc


class BoundedRedisBackend(BoundedArgs, RedisBackend):
    """Celery's Redis result backend, without large args and kwargs in results, whose client
    side names an unreachable Redis in one line."""

    ResultConsumer = ResultConsumer


def bounded(backend_cls: type) -> type:
    """The class to use instead of ``backend_cls`` (the same class for backends taskpool does
    not know: their results keep every argument)."""
    return BoundedRedisBackend if backend_cls is RedisBackend else backend_cls
