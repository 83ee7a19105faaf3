"""Liveness leases for delivered messages: a live worker's unacked messages are never handed out
again; a dead worker's are, exactly once, within the lease ttl.

kombu's Redis transport keeps every message a worker holds unacknowledged in the hash
``unacked`` (delivery tag -> message) and the sorted set ``unacked_index`` (tag -> delivery
time); any worker puts back the tags older than ``visibility_timeout`` (3600 s). taskpool adds
one hash, ``<keyspace>:deliveries:owners`` (tag -> the worker that holds it), and three moves,
each one Lua script:

- ``refresh.lua``: every ttl/3 a worker sets the index score of each tag it still holds to now
  (its lease). Neither kombu's sweep nor taskpool's ever sees a live worker's tag as old,
  however long the task runs or its ETA waits.
- ``claim.lua``: a sweep takes the tags not vouched for in a whole ttl that have an owner (a
  taskpool worker that died), makes them the sweeper's, and the sweeper restores them with
  kombu's own ``restore_by_tag`` (exactly once: it pushes only what is still in the hash).
  Tags without an owner are plain Celery's, left to the visibility timeout.
- ``ack.lua``: an ack removes a tag only while it is the acking worker's: a message restored
  from a worker presumed dead keeps its tag, and that worker's late ack must not drop the next
  worker's delivery.

The keys of kombu are passed in (they carry the transport's ``global_keyprefix``); this module
calls no Celery.
"""

from __future__ import annotations

import time
from importlib import resources

import redis

from taskpool.core.names import delivery_owners_key

__all__ = ["DeliveryLeases"]


def _script(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()


ACK_LUA = _script("ack.lua")
REFRESH_LUA = _script("refresh.lua")
CLAIM_LUA = _script("claim.lua")
FORGET_LUA = _script("forget.lua")

#: Tags per refresh call (one script run each; keeps a call's argument list small).
REFRESH_BATCH = 500


class DeliveryLeases:
    """The Redis side of delivery leases for one worker (``owner``).

    Args:
        client: a Redis client of the broker's database (no key prefix of its own).
        keyspace: taskpool's keyspace (``Settings.keyspace``).
        keyprefix: kombu's ``global_keyprefix`` (``""`` when unset).
        unacked: kombu's unacked hash and index names, before the prefix.
        owner: this worker's name in the owners hash (unique per process start).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        keyspace: str,
        owner: str,
        keyprefix: str = "",
        unacked: tuple[str, str] = ("unacked", "unacked_index"),
    ) -> None:
        self.client = client
        self.owner = owner
        #: The owners hash's name before the prefix (what a prefixing kombu pipeline is given).
        self.owners_name = delivery_owners_key(keyspace)
        self.unacked_key = keyprefix + unacked[0]
        self.index_key = keyprefix + unacked[1]
        self.owners_key = keyprefix + self.owners_name
        self._ack = client.register_script(ACK_LUA)
        self._refresh = client.register_script(REFRESH_LUA)
        self._claim = client.register_script(CLAIM_LUA)
        self._forget = client.register_script(FORGET_LUA)

    def ack(self, tag: str) -> bool:
        """Remove the delivery ``tag``; False when another worker holds it now (nothing removed)."""
        return bool(self._ack([self.unacked_key, self.index_key, self.owners_key], [tag, self.owner]))

    def holder(self, tag: str) -> str | None:
        """The worker recorded as holding ``tag`` (None: nobody, e.g. plain Celery's)."""
        value = self.client.hget(self.owners_key, tag)
        return None if value is None else value.decode() if isinstance(value, bytes) else str(value)

    def forget(self, tag: str) -> bool:
        """Drop the owner of ``tag`` once kombu restored it (a no-op while it is still unacked)."""
        return bool(self._forget([self.unacked_key, self.owners_key], [tag]))

    def refresh(self, tags: list[str], now: float | None = None) -> dict[str, str | None]:
        """Vouch for ``tags`` (held by this worker) now; returns the tags that are not this
        worker's any more, each with who holds it now (None: nobody, it was acked or restored)."""
        now = time.time() if now is None else now
        gone: dict[str, str | None] = {}
        for start in range(0, len(tags), REFRESH_BATCH):
            batch = tags[start : start + REFRESH_BATCH]
            reply = self._refresh([self.index_key, self.owners_key], [self.owner, repr(now), *batch])
            for tag, holder in zip(reply[::2], reply[1::2], strict=True):
                gone[_text(tag)] = _text(holder) or None
        return gone

    def claim(self, ttl: float, limit: int = 100, now: float | None = None) -> list[tuple[str, str]]:
        """Take over the deliveries not vouched for in ``ttl`` seconds whose owner is a taskpool
        worker: ``[(tag, previous owner), ...]``, oldest first. The caller restores each (kombu's
        ``restore_by_tag``); a tag it fails to restore is claimed again ``ttl`` later."""
        now = time.time() if now is None else now
        reply = self._claim(
            [self.unacked_key, self.index_key, self.owners_key],
            [self.owner, repr(now), repr(now - ttl), limit],
        )
        return [(_text(tag), _text(owner)) for tag, owner in zip(reply[::2], reply[1::2], strict=True)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
