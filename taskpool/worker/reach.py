"""The state's Redis at a worker's start: wait for it, as Celery waits for its broker.

A plain or Sentinel client connects on first use, so a worker starts while its state's Redis is
down and its steps retry. A Redis Cluster client (``TASKPOOL_STATE_URL=redis+cluster://...``)
asks its seed nodes for the cluster's layout when it is made: without this, a Cluster that does
not answer yet would end the worker at start with a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from taskpool.core.settings import mask_url

logger = logging.getLogger("taskpool.worker")

#: Longest wait between two tries, seconds (the first waits 1 s, then twice as long each time).
MAX_RETRY_DELAY = 10.0


def state_redis(app: Any, sleep: Callable[[float], None] = time.sleep) -> redis.Redis:
    """``app.redis``, once the state's Redis Cluster answers (a warning per try until then)."""
    delay = 1.0
    while True:
        try:
            client: redis.Redis = app.redis
            return client
        except RedisClusterException as exc:
            logger.warning(
                "taskpool: the state's Redis Cluster at %s does not answer (%s); trying again in %g s "
                "(TASKPOOL_STATE_URL)",
                mask_url(app.settings.redis_url), exc, delay,
            )  # fmt: skip
            sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)
