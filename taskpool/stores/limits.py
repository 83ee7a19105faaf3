"""Sizes of named limits, kept in Redis (``taskpool limits set``)."""

from __future__ import annotations

from typing import cast

import redis

from taskpool.core.errors import ConfigurationError
from taskpool.core.limits import check_limit_name, check_limit_size, parse_stored_size
from taskpool.core.names import limits_key


class LimitStore:
    """Sizes of named limits, in the Redis hash ``<keyspace>:limits`` (name -> slots)."""

    def __init__(self, client: redis.Redis, keyspace: str = "taskpool") -> None:
        self.client = client
        self.key = limits_key(keyspace)

    def set(self, name: str, size: int) -> None:
        """Raises ConfigurationError for an empty or odd name, or a size outside [1, MAX_LIMIT_SIZE]."""
        check_limit_size(check_limit_name(name), size)
        self.client.hset(self.key, name, size)

    def remove(self, name: str) -> bool:
        return bool(self.client.hdel(self.key, name))

    def all(self) -> dict[str, int | str]:
        """Every limit's size; a stored value that is not a valid size comes back as its text."""
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.key))
        out: dict[str, int | str] = {}
        for key, value in raw.items():
            name = key.decode(errors="backslashreplace")
            try:
                out[name] = parse_stored_size(name, value)
            except ConfigurationError:
                out[name] = f"{value.decode(errors='backslashreplace')!r} (invalid)"
        return out

    def get_many(self, names: list[str]) -> dict[str, int | None]:
        """Sizes of ``names`` (None: not set). Raises ConfigurationError for a bad stored value."""
        try:
            values = cast(list[bytes | None], self.client.hmget(self.key, names))
        except redis.ResponseError as exc:  # e.g. WRONGTYPE: the key was overwritten by hand
            raise ConfigurationError(f"limit sizes: Redis key {self.key!r} cannot be read ({exc})") from None
        return {
            n: (parse_stored_size(n, v) if v is not None else None)
            for n, v in zip(names, values, strict=True)
        }
