"""taskpool.stores.queues against the session's redis-server: a queue's depth as kombu counts it,
over every priority step and under kombu's ``global_keyprefix``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import redis
from kombu import Connection, Exchange, Queue

from taskpool.core.names import queue_keyprefix as keyprefix_of
from taskpool.core.names import queue_keys
from taskpool.stores.queues import queue_depth, queue_depths
from taskpool.worker.autoscale.probes import QueueProbe

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def name(redis_client: redis.Redis) -> Iterator[str]:
    queue = f"queues-test.{uuid.uuid4().hex[:10]}"
    yield queue
    for prefix in ("", "pfx:"):
        redis_client.delete(*queue_keys(queue, prefix))


def publish(url: str, queue: str, priorities: list[int], keyprefix: str = "") -> int:
    """Publish one message per priority through kombu; returns kombu's own count of the queue."""
    options = {"global_keyprefix": keyprefix} if keyprefix else {}
    with Connection(url, transport_options=options) as conn:
        q = Queue(queue, Exchange(queue), routing_key=queue, max_priority=9)
        producer = conn.Producer()
        for i, priority in enumerate(priorities):
            producer.publish({"i": i}, exchange=q.exchange, routing_key=queue, declare=[q], priority=priority)
        with conn.channel() as channel:
            # The transport's own count (LLEN over the priority steps). Not queue_declare(passive=True):
            # kombu 5.7's existence check sends EXISTS without the global_keyprefix.
            return int(channel._size(queue))


def test_depth_counts_every_priority_step_as_kombu_does(
    redis_client: redis.Redis, redis_url: str, name: str
) -> None:
    assert queue_depth(redis_client, name) == 0
    counted = publish(redis_url, name, [0, 0, 4, 7, 9])
    assert counted == 5
    assert queue_depth(redis_client, name) == 5
    assert len([k for k in queue_keys(name) if redis_client.llen(k)]) >= 3  # spread over the steps


def test_depth_honours_global_keyprefix(redis_client: redis.Redis, redis_url: str, name: str) -> None:
    counted = publish(redis_url, name, [0, 5, 9], keyprefix="pfx:")
    assert counted == 3
    assert queue_depth(redis_client, name) == 0  # nothing under the bare name
    assert queue_depth(redis_client, name, keyprefix="pfx:") == 3


def test_depths_of_several_queues_in_one_round_trip(redis_client: redis.Redis, redis_url: str) -> None:
    a, b = f"queues-test.{uuid.uuid4().hex[:10]}", f"queues-test.{uuid.uuid4().hex[:10]}"
    try:
        publish(redis_url, a, [0, 3])
        publish(redis_url, b, [9])
        assert queue_depths(redis_client, [a, b, a]) == {a: 2, b: 1}
        assert queue_depths(redis_client, []) == {}
    finally:
        redis_client.delete(*queue_keys(a), *queue_keys(b))


def test_keys_follow_kombus_priority_lists_and_the_prefix_option() -> None:
    assert queue_keys("q") == ["q", "q\x06\x163", "q\x06\x166", "q\x06\x169"]
    assert queue_keys("q", "p:") == [f"p:{k}" for k in queue_keys("q")]
    assert keyprefix_of({"global_keyprefix": "p:", "visibility_timeout": 5}) == "p:"
    assert keyprefix_of(None) == keyprefix_of({}) == ""


def test_autoscaler_probe_reads_the_consumed_queues_under_the_prefix(
    redis_client: redis.Redis, redis_url: str, name: str
) -> None:
    publish(redis_url, name, [0, 6], keyprefix="pfx:")
    app = SimpleNamespace(
        conf=SimpleNamespace(broker_url=redis_url, broker_transport_options={"global_keyprefix": "pfx:"}),
        amqp=SimpleNamespace(queues=SimpleNamespace(consume_from={name: None})),
    )
    probe = QueueProbe.for_app(app)
    assert probe is not None and probe.depth() == 2
    app.conf.broker_transport_options = {}
    probe = QueueProbe.for_app(app)
    assert probe is not None and probe.depth() == 0
