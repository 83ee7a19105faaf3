"""What a test app's task records of one run: its interval and what admission granted it."""

from __future__ import annotations

import json
import time
from typing import Any

from taskpool import current_gpus
from taskpool.core import names


def timed_run(app: Any, task: Any, key: str, seconds: float, **extra: Any) -> dict[str, Any]:
    """Sleep ``seconds`` inside a bound task, then push the run's record (JSON) to list ``key``
    in the app's state Redis: start, end, when the gate took its rate token, retries, worker,
    GPU slots, and ``extra``. Tests check bounds from these records (overlap, order, windows)."""
    start = time.time()
    time.sleep(seconds)
    entry = {
        "start": start,
        "end": time.time(),
        "rate_at": getattr(task.request, names.RATE_AT_KEY, None),
        "retries": task.request.retries,
        "worker": task.request.hostname,
        "gpus": current_gpus(),
        **extra,
    }
    app.redis.rpush(key, json.dumps(entry))
    return entry
