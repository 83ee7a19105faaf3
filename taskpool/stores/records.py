"""Short-lived JSON records of a set of members: one key each (expiring unless renewed) and an
index set of the members. Readers prune the index of members whose record is gone. Redis only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import redis

__all__ = ["read_records"]


def read_records(
    client: redis.Redis,
    index: str,
    key_of: Callable[[str], str],
    *,
    what: str,
    log: logging.Logger,
) -> dict[str, dict[str, Any]]:
    """Member -> record, for every member of the set ``index`` whose record (at ``key_of(member)``)
    is live, sorted by member; members whose record expired are removed from ``index``.

    A record that is not JSON is left out with a warning naming ``what`` (e.g. "fleet report")
    and its member, on ``log``; one that is JSON but not an object is left out silently.
    """
    members = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in client.smembers(index))
    if not members:
        return {}
    values = client.mget([key_of(m) for m in members])
    found: dict[str, dict[str, Any]] = {}
    gone = []
    for member, raw in zip(members, values, strict=True):
        if raw is None:
            gone.append(member)
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            log.warning("taskpool: %s of %s is not JSON; ignored", what, member)
            continue
        if isinstance(record, dict):
            found[member] = record
    if gone:
        client.srem(index, *gone)
    return found
