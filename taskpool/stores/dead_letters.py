"""Dead letters: what is kept of a task that failed for good, in Redis (``taskpool dead ...``)."""

from __future__ import annotations

import json
import time
import traceback as tb
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis

from taskpool.core.errors import DeadLetterNotFound
from taskpool.core.names import dead_letter_keys


@dataclass
class DeadLetter:
    """What is kept of a task that failed for good."""

    task: str
    task_id: str
    args: list[Any]
    kwargs: dict[str, Any]
    exception: str
    traceback: str
    attempts: int
    failed_at: float
    queue: str | None = None
    #: The rest of a chain the task was part of, so a retry resumes the pipeline.
    chain: list[dict[str, Any]] | None = None
    #: Why the worker refused the message without running it (a malformed message); such a
    #: record cannot be retried. ``raw`` is the message as received (truncated when long),
    #: ``headers`` its headers when it had readable ones.
    refused: str | None = None
    raw: str | None = None
    headers: dict[str, Any] | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def for_exception(
        cls,
        exc: BaseException,
        *,
        task: str,
        task_id: str,
        args: Any,
        kwargs: Any,
        attempts: int,
        queue: str | None = None,
        chain: list[dict[str, Any]] | None = None,
    ) -> DeadLetter:
        """The record of a request that failed for good with ``exc`` (being handled now)."""
        exception, traceback = format_exception(exc)
        return cls(
            task=task,
            task_id=task_id,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            exception=exception,
            traceback=traceback,
            attempts=attempts,
            failed_at=now(),
            queue=queue,
            chain=chain or None,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=repr)

    @classmethod
    def from_json(cls, raw: str | bytes) -> DeadLetter:
        return cls(**json.loads(raw))


class DeadLetterStore:
    """Dead-letter records in Redis: a hash of records and a sorted set by failure time.

    Keys: ``<keyspace>:dead`` (hash id -> JSON record), ``<keyspace>:dead:by_time``
    (sorted set id -> failed_at). Both share a hash tag so they live on one Cluster slot.
    """

    def __init__(self, client: redis.Redis, keyspace: str = "taskpool") -> None:
        self.client = client
        self.records_key, self.index_key = dead_letter_keys(keyspace)

    def add(self, record: DeadLetter) -> str:
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.records_key, record.id, record.to_json())
        pipe.zadd(self.index_key, {record.id: record.failed_at})
        pipe.execute()
        return record.id

    def get(self, record_id: str) -> DeadLetter:
        raw = self.client.hget(self.records_key, record_id)
        if raw is None:
            raise DeadLetterNotFound(f"no dead letter with id {record_id!r}; see `taskpool dead ls`")
        return DeadLetter.from_json(raw)

    def resolve(self, id_or_prefix: str) -> str:
        """The id of the one record whose id is ``id_or_prefix`` or starts with it (as git takes
        commit prefixes).

        Raises:
            DeadLetterNotFound: no record matches, or several do (the message lists them).
        """
        if id_or_prefix and self.client.hexists(self.records_key, id_or_prefix):
            return id_or_prefix
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in id_or_prefix) + "*"
        matches = sorted(
            k.decode() if isinstance(k, bytes) else str(k)
            for k, _ in self.client.zscan_iter(self.index_key, match=pattern)
        ) if id_or_prefix else []  # fmt: skip
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise DeadLetterNotFound(f"no dead letter with id {id_or_prefix!r}; see `taskpool dead ls`")
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise DeadLetterNotFound(
            f"dead-letter id prefix {id_or_prefix!r} is ambiguous: {len(matches)} records match "
            f"({shown}); give more characters"
        )

    def list(self, limit: int | None = None) -> list[DeadLetter]:
        """Newest first."""
        end = -1 if limit is None else limit - 1
        ids = cast(list[bytes], self.client.zrevrange(self.index_key, 0, end))
        if not ids:
            return []
        raws = self.client.hmget(self.records_key, ids)
        return [DeadLetter.from_json(r) for r in raws if r is not None]

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(self.list())

    def count(self) -> int:
        return int(self.client.zcard(self.index_key))

    def remove(self, record_id: str) -> bool:
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.records_key, record_id)
        pipe.zrem(self.index_key, record_id)
        removed, _ = pipe.execute()
        return bool(removed)

    def purge(self) -> int:
        pipe = self.client.pipeline(transaction=True)
        pipe.hlen(self.records_key)
        pipe.delete(self.records_key, self.index_key)
        count, _ = pipe.execute()
        return int(count)


def format_exception(exc: BaseException) -> tuple[str, str]:
    """``(repr, traceback text)`` of an exception being handled."""
    return repr(exc), "".join(tb.format_exception(type(exc), exc, exc.__traceback__))


def now() -> float:
    return time.time()
