"""How many messages wait in a broker queue, read from the Redis lists kombu keeps it in.

kombu's Redis transport (5.7, ``kombu/transport/redis.py``) keeps a queue in one list per
priority step: ``<queue>`` for step 0 and ``<queue>\\x06\\x16<step>`` for steps 3, 6 and 9
(``Channel._q_for_pri``, ``Channel.sep``, ``PRIORITY_STEPS``), and prefixes every key with the
``global_keyprefix`` transport option when one is set (``PrefixedStrictRedis``). A queue's depth
is the sum of those lists' lengths, as ``Channel._size`` computes it. The key names come
from :func:`taskpool.core.names.queue_keys`; the prefix from :func:`~taskpool.core.names.queue_keyprefix`.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from taskpool.core.names import PRIORITY_STEPS, queue_keys


def queue_depths(client: redis.Redis, queues: Iterable[str], *, keyprefix: str = "") -> dict[str, int]:
    """Messages waiting in each of ``queues`` (every priority step), read in one round trip.

    Raises:
        redis.RedisError: when Redis cannot be reached; the caller decides what a missing
            figure means.
    """
    names = list(dict.fromkeys(queues))
    if not names:
        return {}
    steps = len(PRIORITY_STEPS)
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            for key in queue_keys(name, keyprefix):
                pipe.llen(key)
        lengths = pipe.execute()
    return {name: sum(int(n) for n in lengths[i * steps : (i + 1) * steps]) for i, name in enumerate(names)}


def queue_depth(client: redis.Redis, queue: str, *, keyprefix: str = "") -> int:
    """Messages waiting in ``queue`` (every priority step)."""
    return queue_depths(client, [queue], keyprefix=keyprefix)[queue]
