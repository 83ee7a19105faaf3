"""The private Celery, kombu and billiard internals taskpool uses still have the shape it read.

One test per function of taskpool.compat, on the installed versions and a real Redis: each
checks the internal is there with the expected shape, then runs the function on real objects.
A failure names the function of taskpool/compat/ to update for the new version.
"""

from __future__ import annotations

import contextvars
import gc
import inspect
import json
import re
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import billiard
import celery
import kombu
import pytest
import redis
from celery import _state as celery_state
from celery.backends.redis import ResultConsumer
from celery.concurrency import asynpool
from celery.local import Proxy
from celery.worker import loops
from celery.worker.consumer.consumer import Consumer
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as virtual
from vine import promise

from taskpool.compat import billiard as compat_billiard
from taskpool.compat import celery as compat_celery
from taskpool.compat import kombu as compat_kombu

COMPAT = {"celery": compat_celery, "kombu": compat_kombu, "billiard": compat_billiard}


def update(function: str) -> str:
    """The failure message: which compat function to update, for which installed versions."""
    return (
        f"update taskpool.compat.{function} (installed: celery {celery.__version__}, "
        f"kombu {kombu.__version__}, billiard {billiard.__version__})"
    )


@pytest.fixture
def connection(redis_url: str) -> Iterator[kombu.Connection]:
    conn = kombu.Connection(redis_url, transport_options={"visibility_timeout": 3600})
    yield conn
    conn.release()


@pytest.fixture
def queue_name(redis_client: redis.Redis) -> Iterator[str]:
    name = f"compat-{uuid.uuid4().hex[:8]}"
    yield name
    redis_client.delete(name)


def consumer_of(connection: kombu.Connection, queue: kombu.Queue, **kwargs: Any) -> SimpleNamespace:
    """What compat reads of Celery's worker consumer: its connection and task consumer."""
    task_consumer = connection.Consumer(queue, **kwargs)
    task_consumer.consume()
    return SimpleNamespace(connection=connection, task_consumer=task_consumer)


# -- celery -------------------------------------------------------------------------------
def test_repoint_current_task() -> None:
    fn = "celery.repoint_current_task"
    assert "__local" in Proxy.__slots__, update(fn)
    import taskpool.client.task as task_module  # re-points current_task when imported

    target = object.__getattribute__(celery_state.current_task, "_Proxy__local")
    assert target is task_module._current_task, update(fn)
    assert compat_celery.repoint_current_task(task_module._current_task), update(fn)
    assert celery.current_task._get_current_object() is None  # no task runs

    def inside_a_coroutine() -> Any:
        task = object()
        task_module._coroutine_request.set((task, None))  # type: ignore[arg-type]
        return celery.current_task._get_current_object() is task

    assert contextvars.copy_context().run(inside_a_coroutine), update(fn)


def test_subscribe_results_and_drain_results_until(redis_url: str) -> None:
    fn = "celery.subscribe_results"
    app = celery.Celery("compat", broker=redis_url, backend=redis_url, set_as_current=False)
    backend = app.backend
    results: list[Any] = []
    try:
        consumer = backend.result_consumer
        assert isinstance(consumer, ResultConsumer), update(fn)
        for name in (*compat_celery.RESULT_CONSUMER_INTERNALS, "_pending_unsubscribe"):
            assert hasattr(consumer, name), update(fn)
        assert consumer._pubsub is None, update(fn)  # made by the first subscribe
        ids = [str(uuid.uuid4()) for _ in range(3)]
        assert compat_celery.subscribe_results(backend, ids), update(fn)
        keys = {backend.get_key_for_task(i) for i in ids}
        assert keys <= consumer.subscribed_to, update(fn)
        assert keys <= {
            bytes(k) if isinstance(k, bytes) else k.encode() for k in consumer._pubsub.channels
        }, update(fn)

        fn = "celery.drain_results_until"
        parameters = inspect.signature(consumer.drainer.drain_events_until).parameters
        assert {"p", "timeout", "interval"} <= set(parameters), update(fn)
        results += [app.AsyncResult(i) for i in ids]
        done: list[str] = []
        for r in results:
            r.then(lambda r: done.append(r.id))
        with warnings.catch_warnings():  # redis-py deprecates the SETEX Celery's backend stores with
            warnings.simplefilter("ignore", DeprecationWarning)
            backend.store_result(ids[1], 42, "SUCCESS")
        woken = promise()
        results[1].then(lambda r: woken())
        for _ in compat_celery.drain_results_until(backend, woken, 10, 0.05):
            pass
        assert done == [ids[1]] and results[1].get(timeout=1) == 42, update(fn)
        started = time.monotonic()
        with pytest.raises(socket.timeout):
            for _ in compat_celery.drain_results_until(backend, promise(), 0.2, 0.05):
                pass
        assert time.monotonic() - started < 5, update(fn)
    finally:
        for r in results:
            backend.remove_pending_result(r)
        results.clear()
        gc.collect()  # AsyncResult.__del__ unsubscribes: now, while Redis runs
        app.close()


def test_wrap_task_handler() -> None:
    fn = "celery.wrap_task_handler"
    assert callable(getattr(Consumer, "create_task_handler", None)), update(fn)
    # Celery's loops ask the consumer instance for the handler: a wrapper set on the instance is used.
    for loop in (loops.asynloop, loops.synloop):
        assert "obj.create_task_handler()" in inspect.getsource(loop), update(fn)
    made: list[str] = []

    class Fake:
        def create_task_handler(self) -> Any:
            return lambda message: made.append(f"celery:{message}")

    fake = Fake()
    assert compat_celery.wrap_task_handler(fake, lambda handler: lambda m: handler(f"checked {m}"))
    assert not compat_celery.wrap_task_handler(fake, lambda handler: handler)  # once only
    fake.create_task_handler()("m")
    assert made == ["celery:checked m"]


def test_requests_in_pool() -> None:
    """Celery's reserved and active requests, read before ``on_close`` clears the reserved ones
    (and cancels scheduled ones, which are in neither): the delivery tags of their messages."""
    fn = "celery.requests_in_pool"
    from celery.worker import state as worker_state
    from celery.worker.consumer.consumer import Consumer as CeleryConsumer
    from celery.worker.request import Request

    assert isinstance(getattr(Request, "message", None), property), update(fn)
    source = inspect.getsource(CeleryConsumer.on_close)
    assert "reserved_requests.clear()" in source and "scheduled_requests" in source, update(fn)

    class Held:  # hashable, as Celery's requests are
        def __init__(self, tag: str) -> None:
            self.message = SimpleNamespace(delivery_tag=tag)

    reserved, active = Held("tag-r"), Held("tag-a")
    worker_state.reserved_requests.add(reserved)
    worker_state.active_requests.add(active)
    try:
        assert sorted(compat_celery.requests_in_pool()) == ["tag-a", "tag-r"]
    finally:
        worker_state.reserved_requests.discard(reserved)
        worker_state.active_requests.discard(active)


# -- kombu --------------------------------------------------------------------------------
def test_guard_brpop_reader_and_forget_delivery(connection: kombu.Connection, queue_name: str) -> None:
    fn = "kombu.guard_brpop_reader"
    channel = connection.default_channel
    assert isinstance(channel, kombu_redis.Channel), update(fn)
    assert callable(channel.handlers.get("BRPOP")), update(fn)
    assert list(inspect.signature(channel.client.parse_response).parameters)[:2] == [
        "connection",
        "command_name",
    ], update(fn)
    assert channel.sep == "\x06\x16", update(fn)
    refused: list[tuple[str, bytes, str]] = []
    received: list[Any] = []
    queue = kombu.Queue(queue_name, routing_key=queue_name)
    consumer = consumer_of(connection, queue, callbacks=[lambda body, message: received.append(body)])
    guarded = compat_kombu.guard_brpop_reader(
        consumer, lambda q, item, exc: refused.append((q, item, type(exc).__name__)), lambda channel: ()
    )
    assert guarded, update(fn)
    assert not compat_kombu.guard_brpop_reader(consumer, lambda *a: None, lambda channel: ())  # once only
    channel.client.lpush(queue_name, b"not json")
    connection.drain_events(timeout=5)  # kombu fails on the entry; the guard hands it over
    assert refused and refused[0][:2] == (queue_name, b"not json"), (refused, update(fn))
    with connection.Producer() as producer:
        producer.publish({"x": 1}, routing_key=queue_name, declare=[queue])
    connection.drain_events(timeout=5)
    assert received == [{"x": 1}], update(fn)  # a good entry is kombu's as before

    fn = "kombu.forget_delivery"
    assert inspect.signature(channel.qos.ack).parameters.keys() == {"delivery_tag"}, update(fn)
    queue2 = kombu.Queue(f"{queue_name}-2", routing_key=f"{queue_name}-2")
    with connection.Producer() as producer:
        producer.publish({"y": 2}, routing_key=queue2.name, declare=[queue2])
    [entry] = channel.client.lrange(queue2.name, 0, -1)
    tag = json.loads(entry)["properties"]["delivery_tag"]
    got: list[Any] = []
    consumer_of(connection, queue2, callbacks=[lambda body, message: got.append(message)])
    connection.drain_events(timeout=5)
    assert got and channel.client.hexists(channel.unacked_key, tag), update(fn)  # delivered, unacked
    compat_kombu.forget_delivery(channel, entry)
    assert not channel.client.hexists(channel.unacked_key, tag), update(fn)


def test_restore_messages(connection: kombu.Connection, queue_name: str) -> None:
    fn = "kombu.restore_messages"
    channel = connection.default_channel
    assert {"tag", "client", "leftmost"} <= set(inspect.signature(channel.qos.restore_by_tag).parameters), (
        update(fn)
    )
    queue = kombu.Queue(queue_name, routing_key=queue_name)
    got: list[Any] = []
    consumer = consumer_of(connection, queue, callbacks=[lambda body, message: got.append(message)])
    with connection.Producer() as producer:
        for z in (3, 4):
            producer.publish({"z": z}, routing_key=queue_name, declare=[queue])
    while len(got) < 2:
        connection.drain_events(timeout=5)
    assert channel.client.llen(queue_name) == 0
    consumer.task_consumer.cancel()
    mine, taken = (m.delivery_tag for m in got)

    fn = "kombu.restore_held"  # with delivery leases: only what is still this worker's
    restored: list[str] = []
    hooks = SimpleNamespace(still_mine=lambda tag: tag == mine, restored=restored.append)
    assert compat_kombu.restore_held(channel.qos, [mine, taken], hooks) == (1, []), update(fn)
    assert channel.client.llen(queue_name) == 1 and restored == [mine], update(fn)
    assert channel.client.hexists(channel.unacked_key, taken), update(fn)

    fn = "kombu.restore_messages"  # without: every tag
    assert compat_kombu.restore_messages(consumer, [mine, taken]) == 2, update(fn)  # mine: a no-op
    assert channel.client.llen(queue_name) == 2, update(fn)
    assert not channel.client.hexists(channel.unacked_key, taken), update(fn)


def test_requeue_at_head_and_window_has_room(connection: kombu.Connection, queue_name: str) -> None:
    fn = "kombu.requeue_at_head"
    channel = connection.default_channel
    assert {"tag", "client", "leftmost"} <= set(inspect.signature(channel.qos.restore_by_tag).parameters), (
        update(fn)
    )
    assert isinstance(channel.qos, virtual.QoS), update(fn)
    # Why not kombu's own requeue: it restores with leftmost=True, behind the backlog.
    assert "leftmost=True" in inspect.getsource(kombu_redis.QoS.reject), update(fn)
    queue = kombu.Queue(queue_name, routing_key=queue_name)
    got: list[Any] = []
    consumer = consumer_of(connection, queue, callbacks=[lambda body, message: got.append(message)])
    consumer.task_consumer.qos(prefetch_count=1)
    with connection.Producer() as producer:
        for n in range(3):
            producer.publish({"n": n}, routing_key=queue_name, declare=[queue])
    connection.drain_events(timeout=5)
    [first] = got
    assert first.payload == {"n": 0}
    assert not compat_kombu.window_has_room(consumer), update("kombu.window_has_room")  # 1 of 1 unacked
    assert compat_kombu.requeue_at_head(first), update(fn)
    assert first.acknowledged, update(fn)
    assert not channel.client.hexists(channel.unacked_key, first.delivery_tag), update(fn)
    assert compat_kombu.window_has_room(consumer), update("kombu.window_has_room")
    assert not compat_kombu.requeue_at_head(first), update(fn)  # no longer this channel's
    connection.drain_events(timeout=5)
    again = got[1]  # the head of the queue: the same message, before n=1 and n=2
    assert (again.payload, again.delivery_tag) == ({"n": 0}, first.delivery_tag), update(fn)
    assert again.delivery_info.get("redelivered") is True, update(fn)
    assert channel.client.llen(queue_name) == 2, update(fn)  # no duplicate
    again.ack()
    for _ in range(2):
        connection.drain_events(timeout=5)
        got[-1].ack()
    assert [m.payload["n"] for m in got] == [0, 0, 1, 2], update(fn)
    # With the delivery leases' hooks on the channel, the hooked QoS requeues (at the head, and
    # only while the delivery is this worker's).
    hooks = RecordingHooks()
    assert compat_kombu.install_qos_hooks(consumer, hooks) is channel, update(fn)
    with connection.Producer() as producer:
        producer.publish({"n": 3}, routing_key=queue_name, declare=[queue])
    connection.drain_events(timeout=5)
    hooked = got[-1]
    assert compat_kombu.requeue_at_head(hooked), update(fn)
    tag = hooked.delivery_tag
    assert hooks.calls[-2:] == [("requeue", tag), ("restored", tag)], update(fn)
    assert hooked.acknowledged and compat_kombu.window_has_room(consumer), update(fn)
    connection.drain_events(timeout=5)
    assert got[-1].delivery_tag == hooked.delivery_tag, update(fn)
    got[-1].ack()
    channel.client.delete("compat:owners")


def test_close_task_channel(connection: kombu.Connection, queue_name: str) -> None:
    fn = "kombu.close_task_channel"
    from celery.utils import threads

    assert callable(getattr(threads, "bound_open_broker_sockets", None)), update(fn)
    assert callable(getattr(threads, "default_socket_timeout", None)), update(fn)
    channel = connection.default_channel
    assert channel.closed is False, update(fn)
    consumer = consumer_of(connection, kombu.Queue(queue_name, routing_key=queue_name))
    compat_kombu.close_task_channel(consumer)
    assert channel.closed is True, update(fn)


def test_shorten_polls_without_credit(connection: kombu.Connection, queue_name: str) -> None:
    fn = "kombu.shorten_polls_without_credit"
    assert callable(getattr(virtual.QoS, "can_consume", None)), update(fn)
    # Why: Celery's loop without an event loop (gevent) polls with a 2 s timeout.
    assert "connection.drain_events(timeout=2.0)" in inspect.getsource(loops.synloop), update(fn)
    queue = kombu.Queue(queue_name, routing_key=queue_name)
    got: list[Any] = []
    consumer = consumer_of(connection, queue, callbacks=[lambda body, message: got.append(message)])
    consumer.task_consumer.qos(prefetch_count=1)
    assert compat_kombu.shorten_polls_without_credit(consumer, 0.01), update(fn)
    with connection.Producer() as producer:
        producer.publish({"w": 4}, routing_key=queue_name, declare=[queue])
    connection.drain_events(timeout=5)
    assert got and not connection.default_channel.qos.can_consume(), update(fn)  # the window is full
    started = time.monotonic()
    with pytest.raises(socket.timeout):
        connection.drain_events(timeout=2.0)
    assert time.monotonic() - started < 1.0, update(fn)
    got[0].ack()


class RecordingHooks:
    """What install_qos_hooks calls, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def appended(self, pipe: Any, tag: str) -> None:
        pipe.hset("compat:owners", tag, "me")
        self.calls.append(("appended", tag))

    def ack(self, tag: str) -> None:
        self.calls.append(("ack", tag))

    def requeue(self, qos: Any, tag: str) -> None:
        self.calls.append(("requeue", tag))
        qos.restore_by_tag(tag, leftmost=False)

    def restored(self, tag: str) -> None:
        self.calls.append(("restored", tag))


def test_install_qos_hooks_hooked_qos_class_and_unacked_keys(
    connection: kombu.Connection, queue_name: str
) -> None:
    fn = "kombu.install_qos_hooks"
    qos_cls = kombu_redis.QoS
    append = inspect.getsource(qos_cls.append)
    # hooked_qos_class copies kombu's append (ZADD of the index with the time, HSET of the hash).
    assert "zadd(self.unacked_index_key" in append and "hset(self.unacked_key" in append, update(
        "kombu.hooked_qos_class"
    )
    assert "dumps([message._raw, EX, RK])" in append, update("kombu.hooked_qos_class")
    # Why requeue is replaced: kombu requeues with an LPUSH, the tail of a queue BRPOP reads from the right.
    assert "restore_by_tag(delivery_tag, leftmost=True)" in inspect.getsource(qos_cls.reject), update(
        "kombu.hooked_qos_class"
    )
    assert "lpush if leftmost else pipe.rpush" in inspect.getsource(kombu_redis.Channel._do_restore_message)
    # The channel keeps one QoS instance, made on first use (Celery's basic_qos, before any delivery).
    assert "self._qos = self.QoS(self)" in inspect.getsource(virtual.Channel.qos.fget), update(fn)
    queue = kombu.Queue(queue_name, routing_key=queue_name)
    got: list[Any] = []
    consumer = consumer_of(connection, queue, callbacks=[lambda body, message: got.append(message)])
    consumer.task_consumer.qos(prefetch_count=5)
    hooks = RecordingHooks()
    channel = compat_kombu.install_qos_hooks(consumer, hooks)
    assert channel is connection.default_channel and channel.qos.prefetch_count == 5, update(fn)
    assert compat_kombu.unacked_keys(channel) == ("unacked", "unacked_index"), update("kombu.unacked_keys")
    client = channel.client
    with connection.Producer() as producer:
        for n in range(3):
            producer.publish({"n": n}, routing_key=queue_name, declare=[queue])
    for _ in range(3):
        connection.drain_events(timeout=5)
    first, second, third = got
    tags = [m.delivery_tag for m in got]
    assert [c for c in hooks.calls] == [("appended", t) for t in tags], update(fn)
    assert all(client.hexists("unacked", t) and client.zscore("unacked_index", t) for t in tags), update(fn)
    assert client.hget("compat:owners", first.delivery_tag) == b"me", update(fn)
    first.ack()
    assert hooks.calls[-1] == ("ack", first.delivery_tag), update(fn)
    assert not channel.qos._delivered.get(first.delivery_tag) or first.delivery_tag in channel.qos._dirty
    with connection.Producer() as producer:
        producer.publish({"n": "later"}, routing_key=queue_name, declare=[queue])
    second.reject(requeue=True)
    assert hooks.calls[-2:] == [("requeue", second.delivery_tag), ("restored", second.delivery_tag)], update(
        fn
    )
    # At the head: the next read (BRPOP takes from the right) is the requeued message, not "later".
    assert json.loads(client.lindex(queue_name, -1))["properties"]["delivery_tag"] == second.delivery_tag
    third.reject(requeue=False)
    assert hooks.calls[-1] == ("ack", third.delivery_tag), update(fn)
    client.delete("compat:owners")


# -- billiard -----------------------------------------------------------------------------
def test_process_exit_hook() -> None:
    fn = "billiard.ProcessExitHook"
    handler = getattr(asynpool.AsynPool, "_event_process_exit", None)
    assert callable(handler), update(fn)
    assert list(inspect.signature(handler).parameters) == ["self", "hub", "proc"], update(fn)
    assert "maintain_pool()" in inspect.getsource(handler), update(fn)
    from taskpool.worker.pools.prefork import AsynPool

    assert AsynPool._event_process_exit is compat_billiard.ProcessExitHook._event_process_exit


def test_in_pool_and_pool_running() -> None:
    from billiard.pool import Pool

    pool = Pool(1)
    try:
        [child] = pool._pool
        assert compat_billiard.in_pool(pool, child), update("billiard.in_pool")
        assert compat_billiard.pool_running(pool), update("billiard.pool_running")
    finally:
        pool.terminate()
        pool.join()
    assert not compat_billiard.pool_running(pool), update("billiard.pool_running")


def test_keep_handed_jobs_on_flush() -> None:
    """The AsynPool internals KeepHandedJobsOnFlush reads (the flush itself runs in
    tests/integration/test_delivery.py's warm-shutdown tests, through real workers)."""
    fn = "celery.KeepHandedJobsOnFlush"
    import billiard.pool
    from celery.concurrency import asynpool

    assert hasattr(billiard.pool, "RUN") and hasattr(billiard.pool, "TERMINATE"), update(fn)
    assert callable(getattr(asynpool, "_get_job_writer", None)), update(fn)
    assert list(inspect.signature(asynpool.AsynPool._flush_writer).parameters)[:3] == [
        "self",
        "proc",
        "writer",
    ], update(fn)
    init = inspect.getsource(asynpool.AsynPool.__init__)
    assert "self._busy_workers" in init and "self._active_writers" in init, update(fn)
    result_init = inspect.getsource(billiard.pool.ApplyResult.__init__)
    assert all(f"self.{name}" in result_init for name in ("_accepted", "_job")), update(fn)
    assert "job._write_to = " in inspect.getsource(asynpool), update(fn)  # the child it went to
    assert issubclass(compat_celery.KeepHandedJobsOnFlush, object)


def test_reconnect_failure_hook() -> None:
    """The result consumer internals ReconnectFailureHook wraps (the hook itself runs in
    tests/integration/test_cli.py's unreachable-Redis client test)."""
    fn = "celery.ReconnectFailureHook"
    from celery.backends.redis import ResultConsumer

    assert callable(getattr(ResultConsumer, "_reconnect", None)), update(fn)
    source = inspect.getsource(ResultConsumer.reconnect_on_error)
    assert "self._reconnect()" in source and "self._connection_errors" in source, update(fn)


# -- every compat function is checked -------------------------------------------------------
def test_rate_limit_handlers() -> None:
    """Celery's strategy hands a rate-limited request to ``consumer._limit_task`` (an ETA one to
    ``_limit_post_eta``); the handlers replace those two with the same bucket steps, ending in
    taskpool's gate instead of the pool."""
    fn = "celery.rate_limit_handlers"
    from celery.worker import strategy as celery_strategy
    from kombu.utils.limits import TokenBucket

    strategy_source = inspect.getsource(celery_strategy.default)
    assert "_limit_task" in strategy_source and "_limit_post_eta" in strategy_source, update(fn)
    for name in ("_limit_task", "_limit_post_eta"):
        params = list(inspect.signature(getattr(Consumer, name)).parameters)
        assert params == ["self", "request", "bucket", "tokens"], update(fn)
    schedule_source = inspect.getsource(Consumer._schedule_bucket_request)
    for part in ("bucket.contents.appendleft", "_limit_order", "timer.call_after", "expected_time"):
        assert part in schedule_source, update(fn)

    from celery.worker import state as worker_state

    class Req:  # hashable with an id, as Celery's requests are
        def __init__(self, id: str) -> None:
            self.id = id

    first, second = Req("first"), Req("second")
    admitted: list[Req] = []
    timers: list[float] = []
    decremented: list[bool] = []
    consumer = SimpleNamespace(
        _limit_order=0,
        timer=SimpleNamespace(call_after=lambda secs, *a, **kw: timers.append(secs)),
        qos=SimpleNamespace(decrement_eventually=lambda: decremented.append(True)),
    )
    handlers = compat_celery.rate_limit_handlers(consumer, admitted.append)
    assert set(handlers) == {"_limit_task", "_limit_post_eta"}
    bucket = TokenBucket(1, capacity=1)
    try:
        handlers["_limit_task"](first, bucket, 1)  # a token is there: straight on, reserved
        handlers["_limit_post_eta"](second, bucket, 1)  # none left: waits on the timer, in order
        assert admitted == [first]
        assert first in worker_state.reserved_requests
        assert len(timers) == 1 and timers[0] > 0
        assert decremented == [True]
        assert [request for request, _ in bucket.contents] == [second]
    finally:
        worker_state.task_ready(first)  # type: ignore[arg-type]


def test_every_compat_function_has_a_check() -> None:
    """A new function in taskpool/compat/ comes with a check of its internal, here or in
    in test_compat_autoscale.py (the autoscaler's probes)."""
    here = Path(__file__).read_text()
    text = here + (Path(__file__).parent / "test_compat_autoscale.py").read_text()
    missing = [
        f"{library}.{name}"
        for library, module in COMPAT.items()
        for name, value in vars(module).items()
        if (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == module.__name__
        and not name.startswith("_")
        and not re.search(rf"\b{name}\b", text)
    ]
    assert not missing, f"no check of the internal behind: {missing}"


def test_before_connection_loss() -> None:
    """Celery's consumer calls ``on_connection_error_after_connected`` on a connection loss while
    connected, before ``on_close`` drops the requests it holds; taskpool runs its steps' callbacks
    first, once per mark, and a failing one does not stop Celery's handling."""
    fn = "celery.before_connection_loss"
    from celery.worker.consumer.consumer import Consumer as CeleryConsumer

    source = inspect.getsource(CeleryConsumer.start)
    call = source.find("self.on_connection_error_after_connected(exc)")
    assert call != -1 and source.find("self.on_close()", call) > call, update(fn)
    assert callable(getattr(CeleryConsumer, "on_connection_error_after_connected", None)), update(fn)

    calls: list[str] = []
    consumer = SimpleNamespace(on_connection_error_after_connected=lambda exc: calls.append(f"celery {exc}"))

    def failing() -> None:
        calls.append("b")
        raise RuntimeError("b failed")

    assert compat_celery.before_connection_loss(consumer, "a", lambda: calls.append("a"), "a failed")
    assert not compat_celery.before_connection_loss(consumer, "a", lambda: calls.append("again"), "")
    assert compat_celery.before_connection_loss(consumer, "b", failing, "b failed")
    assert not compat_celery.before_connection_loss(consumer, "a", lambda: calls.append("again"), "")
    consumer.on_connection_error_after_connected("lost")
    assert calls == ["b", "a", "celery lost"]
    assert not compat_celery.before_connection_loss(SimpleNamespace(), "a", lambda: None, "")
