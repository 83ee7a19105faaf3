"""The delivery keeper while Redis is down: an ack that cannot be sent keeps its delivery held (and
vouched for) until the keeper sends it; the keeper retries once a second, not in a busy loop."""

from __future__ import annotations

import time

import redis

from taskpool.compat.kombu import restore_held
from taskpool.worker.delivery import RETRY_EVERY, DeliveryHooks, DeliveryKeeper


class Leases:
    """Stands in for DeliveryLeases (Redis up or down at will); records the calls."""

    owner = "w1"
    owners_name = "owners"

    def __init__(self) -> None:
        self.down = False
        self.calls: list[str] = []
        self.acked: list[str] = []
        self.holders: dict[str, str | None] = {}

    def _maybe_down(self, name: str) -> None:
        self.calls.append(name)
        if self.down:
            raise redis.ConnectionError("Redis is down")

    def ack(self, tag: str) -> bool:
        self._maybe_down("ack")
        self.acked.append(tag)
        return True

    def refresh(self, tags: list[str]) -> dict[str, str | None]:
        self._maybe_down("refresh")
        return {}

    def claim(self, ttl: float, limit: int) -> list[tuple[str, str]]:
        return []

    def holder(self, tag: str) -> str | None:
        self._maybe_down("holder")
        return self.holders.get(tag, self.owner)

    def forget(self, tag: str) -> bool:
        self.calls.append(f"forget {tag}")
        return True


class Pipe:
    def hset(self, *args: object) -> None:
        pass


def test_an_ack_that_meets_redis_down_stays_held_until_the_keeper_sends_it() -> None:
    leases = Leases()
    hooks = DeliveryHooks(leases)  # type: ignore[arg-type]
    hooks.appended(Pipe(), "tag-1")
    leases.down = True
    hooks.ack("tag-1")  # no exception: the worker goes on
    assert hooks.held() == ["tag-1"] and hooks.unsent_acks() == ["tag-1"]
    leases.down = False
    assert hooks.retry_acks() == 1
    assert hooks.held() == [] and hooks.unsent_acks() == [] and leases.acked == ["tag-1"]


def test_the_keeper_retries_once_a_second_while_redis_is_down() -> None:
    leases = Leases()
    leases.down = True
    keeper = DeliveryKeeper(DeliveryHooks(leases), ttl=30.0, visibility_timeout=3600.0)  # type: ignore[arg-type]
    keeper.start()
    time.sleep(2.5 * RETRY_EVERY)
    keeper.stop()
    # at 0, 1 and 2 s; a busy loop made ~250 calls
    assert 2 <= leases.calls.count("refresh") <= 4, leases.calls


class QoS:
    """Stands in for kombu's Redis QoS (not hooked): records restores, fails the tags in ``broken``."""

    def __init__(self, broken: frozenset[str] | set[str] = frozenset()) -> None:
        self.broken = broken
        self.restored: list[str] = []

    def restore_by_tag(self, tag: str) -> None:
        if tag in self.broken:
            raise redis.ConnectionError("Redis is down")
        self.restored.append(tag)


def test_restore_after_a_reconnect_puts_back_only_the_deliveries_still_this_workers() -> None:
    leases = Leases()
    hooks = DeliveryHooks(leases)  # type: ignore[arg-type]
    for tag in "abcde":
        hooks.appended(Pipe(), tag)
    leases.holders = {"b": "w2", "d": None}  # b: another worker's now; d: nobody's (kombu restored it)
    qos = QoS(broken={"e"})
    restored, failed = restore_held(qos, list("abcde"), hooks)
    assert restored == 2 and qos.restored == ["c", "a"]  # each to the head: the order is kept
    assert [tag for tag, _exc in failed] == ["e"]
    assert hooks.held() == ["e"]  # the others restored (and forgotten) or not this worker's
    assert "forget a" in leases.calls and "forget b" not in leases.calls


def test_restore_without_delivery_leases_puts_back_every_tag() -> None:
    qos = QoS(broken={"b"})
    restored, failed = restore_held(qos, ["a", "b", "c"])
    assert restored == 2 and qos.restored == ["c", "a"] and [t for t, _e in failed] == ["b"]
    assert restore_held(object(), ["a"]) == (0, [])  # no restore_by_tag: a broker that redelivers
