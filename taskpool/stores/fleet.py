"""The fleet's state in Redis, so every replica of the controller and every `taskpool` command agree:
each pool's policy, each worker's report (short-lived, renewed by the worker), the last decision
per pool and a log of the recent ones. Redis only, no Celery.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import redis

from taskpool.core.fleet import FleetDecision, FleetPolicy, FleetSignal
from taskpool.core.names import fleet_keys, fleet_worker_key
from taskpool.stores.records import read_records

logger = logging.getLogger("taskpool.fleet")

#: Seconds a worker's report lives unless it is published again (a worker publishes twice a second).
REPORT_TTL = 3.0
#: Decisions kept in the log (newest first).
DECISIONS_KEPT = 50


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class FleetStore:
    """Policies, reports and decisions of one keyspace's fleet.

    Args:
        client: Redis client (shared, thread-safe pool).
        keyspace: the app's keyspace.
    """

    def __init__(self, client: redis.Redis, keyspace: str) -> None:
        self.client = client
        self.keyspace = keyspace
        self.keys = fleet_keys(keyspace)

    # -- policies ------------------------------------------------------------------------------
    def policy(self, pool: str) -> FleetPolicy | None:
        """``pool``'s stored policy, or None when none was stored."""
        raw = self.client.hget(self.keys["policies"], pool)
        return FleetPolicy.from_dict(pool, json.loads(raw)) if raw is not None else None

    def policies(self) -> dict[str, FleetPolicy]:
        """Every stored policy, by pool."""
        out = {}
        for pool, raw in self.client.hgetall(self.keys["policies"]).items():
            name = _text(pool)
            out[name] = FleetPolicy.from_dict(name, json.loads(raw))
        return dict(sorted(out.items()))

    def set_policy(self, policy: FleetPolicy) -> None:
        self.client.hset(self.keys["policies"], policy.pool, json.dumps(policy.as_dict(), sort_keys=True))

    def seed_policy(self, policy: FleetPolicy) -> FleetPolicy:
        """Store ``policy`` unless one is stored already (a runtime change outlives a restart);
        returns the policy in force."""
        self.client.hsetnx(self.keys["policies"], policy.pool, json.dumps(policy.as_dict(), sort_keys=True))
        return self.policy(policy.pool) or policy

    def update_policy(self, pool: str, default: FleetPolicy | None = None, **changes: Any) -> FleetPolicy:
        """Change ``pool``'s stored policy (or ``default``, or the built-in one), validated; stored
        only when valid. Raises ``ConfigurationError`` naming the pool, the option and the value."""
        current = self.policy(pool) or default or FleetPolicy(pool)
        new = current.updated(**changes)
        self.set_policy(new)
        return new

    # -- workers' reports ----------------------------------------------------------------------
    def publish_report(self, node: str, report: Mapping[str, Any], ttl: float = REPORT_TTL) -> None:
        """Publish (or renew) ``node``'s report."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(
            fleet_worker_key(self.keyspace, node), json.dumps(report, sort_keys=True), px=round(ttl * 1000)
        )
        pipe.sadd(self.keys["workers"], node)
        pipe.execute()

    def withdraw_report(self, node: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(fleet_worker_key(self.keyspace, node))
        pipe.srem(self.keys["workers"], node)
        pipe.execute()

    def reports(self) -> dict[str, dict[str, Any]]:
        """node -> report, for every worker whose report is live; prunes the others."""
        return read_records(
            self.client,
            self.keys["workers"],
            lambda node: fleet_worker_key(self.keyspace, node),
            what="fleet report",
            log=logger,
        )

    # -- decisions -----------------------------------------------------------------------------
    def record(self, decision: FleetDecision, signal: FleetSignal, *, log: bool) -> None:
        """Store ``decision`` as ``pool``'s last; with ``log``, add it to the decisions log too."""
        entry = json.dumps({**decision.as_dict(), "signal": signal.as_dict()}, sort_keys=True)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.keys["desired"], decision.pool, entry)
        if log:
            pipe.lpush(self.keys["decisions"], entry)
            pipe.ltrim(self.keys["decisions"], 0, DECISIONS_KEPT - 1)
        pipe.execute()

    def note(self, pool: str, text: str, at: float) -> None:
        """Add an action (a worker started or drained) to the decisions log."""
        entry = json.dumps({"pool": pool, "action": text, "at": at}, sort_keys=True)
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(self.keys["decisions"], entry)
        pipe.ltrim(self.keys["decisions"], 0, DECISIONS_KEPT - 1)
        pipe.execute()

    def desired(self) -> dict[str, dict[str, Any]]:
        """pool -> its last decision (``desired``, ``live``, ``reason``, ``at``, ``signal``)."""
        return {
            _text(pool): json.loads(raw)
            for pool, raw in sorted(self.client.hgetall(self.keys["desired"]).items())
        }

    def decisions(self, count: int = 10) -> list[dict[str, Any]]:
        """The last ``count`` decisions and actions, newest first."""
        return [json.loads(raw) for raw in self.client.lrange(self.keys["decisions"], 0, count - 1)]
