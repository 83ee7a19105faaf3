"""Cluster-wide rates in Redis: one GCRA script takes a token of several rates at once, or none.

On Redis Cluster a script may only touch keys of one hash slot, and each rate has its own hash tag
(``<keyspace>:rate:{<name>}``): rates are shared by any mix of tasks, so no tag could cover every
combination short of putting all rates on one slot (one node serving every rate of the cluster).
A :class:`~redis.cluster.RedisCluster` client therefore takes the rates of one request per slot
group, one script call each, in slot order (every worker the same order), and refunds the groups
it took when a later group refuses: still all or none, and a rate is never exceeded; a refused
request may hold another group's token for one round trip, which can only delay (never admit)
a competing request. A plain Redis client (standalone, Sentinel) keeps one call for all rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from taskpool.core.names import rate_key
from taskpool.core.rates import RateNeed

GCRA_LUA = resources.files("taskpool.stores.rates").joinpath("gcra.lua").read_text(encoding="utf-8")


@dataclass(frozen=True)
class RateRefusal:
    """Rates refused a token: ``blocking`` conforms again in ``wait`` seconds."""

    blocking: RateNeed
    wait: float


def slot_groups(needs: list[RateNeed], keyspace: str) -> list[list[RateNeed]]:
    """``needs`` split by the Redis Cluster slot of their keys, in slot order (one script call
    each on Cluster)."""
    groups: dict[int, list[RateNeed]] = {}
    for need in needs:
        groups.setdefault(key_slot(rate_key(need.name, keyspace).encode()), []).append(need)
    return [groups[slot] for slot in sorted(groups)]


class Rates:
    """Tokens of cluster-wide rates (GCRA, no burst), in ``<keyspace>:rate:{<name>}`` keys.

    ``client`` may be a :class:`redis.Redis` (one script call per request) or a
    :class:`~redis.cluster.RedisCluster` (one call per slot group, see the module's note).
    """

    def __init__(self, client: redis.Redis | RedisCluster, keyspace: str = "taskpool") -> None:
        self.client = client
        self.keyspace = keyspace
        self._script: Any = None

    def _call(self, mode: str, needs: list[RateNeed]) -> list[int]:
        if self._script is None:
            self._script = self.client.register_script(GCRA_LUA)
        keys = [rate_key(n.name, self.keyspace) for n in needs]
        argv = [mode, *(f"{n.interval_ms * 1000:.0f}" for n in needs)]
        return cast(list[int], self._script(keys=keys, args=argv))

    def _groups(self, needs: list[RateNeed]) -> list[list[RateNeed]]:
        if isinstance(self.client, RedisCluster):
            return slot_groups(needs, self.keyspace)
        return [needs]

    def take(self, needs: list[RateNeed]) -> float | RateRefusal | None:
        """One token of every rate of ``needs``, or none: the time it was granted (seconds since the
        epoch, Redis clock; on Cluster, when its last slot group was), ``None`` for no rates, or a
        refusal saying how long to wait."""
        if not needs:
            return None
        taken: list[list[RateNeed]] = []
        granted_us = 0
        for group in self._groups(needs):
            try:
                out = self._call("take", group)
            except BaseException:
                self._refund_groups(taken)
                raise
            if int(out[0]) != 1:
                self._refund_groups(taken)
                return RateRefusal(group[int(out[2]) - 1], int(out[1]) / 1e6)
            taken.append(group)
            granted_us = max(granted_us, int(out[1]))
        return granted_us / 1e6

    def refund(self, needs: list[RateNeed]) -> None:
        """Give back the tokens of a :meth:`take` whose request did not run."""
        if needs:
            self._refund_groups(self._groups(needs))

    def _refund_groups(self, groups: list[list[RateNeed]]) -> None:
        for group in groups:
            self._call("refund", group)
