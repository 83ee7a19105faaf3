"""Results that do not copy large arguments: ``result_extended`` keeps args and kwargs in each
result, which for a 10 MB argument means a 10 MB result key kept for ``result_expires``.

:func:`bounded` gives a result backend class whose stored ``args``/``kwargs`` are replaced by a
marker string when their JSON form is longer than ``TASKPOOL_RESULT_ARGS_MAX_SIZE`` (0: keep
them whatever their size). The task itself still gets its arguments; only the copy in the
result is left out.
"""

from __future__ import annotations

import json
from typing import Any

from celery.backends.redis import RedisBackend


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


class BoundedRedisBackend(BoundedArgs, RedisBackend):
    """Celery's Redis result backend, without large args and kwargs in results."""


def bounded(backend_cls: type) -> type:
    """The class to use instead of ``backend_cls`` (the same class for backends taskpool does
    not know: their results keep every argument)."""
    return BoundedRedisBackend if backend_cls is RedisBackend else backend_cls
