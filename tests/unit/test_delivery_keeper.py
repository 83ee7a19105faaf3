"""The delivery keeper while Redis is down: an ack that cannot be sent keeps its delivery held (and
vouched for) until the keeper sends it; the keeper retries once a second, not in a busy loop."""

from __future__ import annotations

import time

import redis

from taskpool.worker.delivery import RETRY_EVERY, DeliveryHooks, DeliveryKeeper


class Leases:
    """Stands in for DeliveryLeases (Redis up or down at will); records the calls."""

    owner = "w1"
    owners_name = "owners"

    def __init__(self) -> None:
        self.down = False
        self.calls: list[str] = []
        self.acked: list[str] = []

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
