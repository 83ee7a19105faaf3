"""The workers that can hold gated requests, as each describes itself: one short-lived record each.

A worker with an admission gate publishes which queues it consumes and for which gated tasks it
has room (:mod:`taskpool.worker.placement` says what room is), at least every second and
whenever that changes. A record expires unless renewed, so a worker that dies drops out by
itself; readers prune the index of owners whose record is gone. Redis only, no Celery.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import redis

from taskpool.core.names import peer_keys
from taskpool.stores.records import read_records

logger = logging.getLogger("taskpool.admission")

#: Seconds a record lives unless it is published again (its worker publishes every second).
PEER_TTL = 3.0


class PeerBoard:
    """The records of every worker of one keyspace; this worker's own is ``owner``'s.

    Args:
        client: Redis client (shared, thread-safe pool).
        keyspace: the app's keyspace.
        owner: this worker's ``host:pid`` (the admission gate's owner).
        ttl: seconds a published record lives.
    """

    def __init__(self, client: redis.Redis, keyspace: str, owner: str, *, ttl: float = PEER_TTL) -> None:
        self.client = client
        self.keyspace = keyspace
        self.owner = owner
        self.ttl = ttl
        self.index, self.key = peer_keys(keyspace, owner)

    def publish(self, record: Mapping[str, Any]) -> None:
        """Publish (or renew) this worker's record."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.key, json.dumps(record, sort_keys=True), px=max(1, round(self.ttl * 1000)))
        pipe.sadd(self.index, self.owner)
        pipe.execute()

    def read(self) -> dict[str, dict[str, Any]]:
        """Owner -> record, for every worker whose record is live (this one's included)."""
        return read_records(
            self.client,
            self.index,
            lambda owner: peer_keys(self.keyspace, owner)[1],
            what="peer record",
            log=logger,
        )

    def withdraw(self) -> None:
        """Remove this worker's record (at shutdown; otherwise it expires after ``ttl``)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self.key)
        pipe.srem(self.index, self.owner)
        pipe.execute()
