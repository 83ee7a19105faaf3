"""Cluster-wide rates in Redis: one GCRA script takes a token of several rates at once, or none."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import redis

from taskpool.core.names import rate_key
from taskpool.core.rates import RateNeed

GCRA_LUA = resources.files("taskpool.stores.rates").joinpath("gcra.lua").read_text(encoding="utf-8")


@dataclass(frozen=True)
class RateRefusal:
    """Rates refused a token: ``blocking`` conforms again in ``wait`` seconds."""

    blocking: RateNeed
    wait: float


class Rates:
    """Tokens of cluster-wide rates (GCRA, no burst), in ``<keyspace>:rate:{<name>}`` keys."""

    def __init__(self, client: redis.Redis, keyspace: str = "taskpool") -> None:
        self.client = client
        self.keyspace = keyspace
        self._script: Any = None

    def _call(self, mode: str, needs: list[RateNeed]) -> list[int]:
        if self._script is None:
            self._script = self.client.register_script(GCRA_LUA)
        keys = [rate_key(n.name, self.keyspace) for n in needs]
        argv = [mode, *(f"{n.interval_ms * 1000:.0f}" for n in needs)]
        return cast(list[int], self._script(keys=keys, args=argv))

    def take(self, needs: list[RateNeed]) -> float | RateRefusal | None:
        """One token of every rate of ``needs``, or none: the time it was granted (seconds since the
        epoch, Redis clock), ``None`` for no rates, or a refusal saying how long to wait."""
        if not needs:
            return None
        out = self._call("take", needs)
        if int(out[0]) == 1:
            return int(out[1]) / 1e6
        return RateRefusal(needs[int(out[2]) - 1], int(out[1]) / 1e6)

    def refund(self, needs: list[RateNeed]) -> None:
        """Give back the tokens of a :meth:`take` whose request did not run."""
        if needs:
            self._call("refund", needs)
