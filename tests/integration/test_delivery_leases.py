"""Delivery leases through real workers: a live worker's messages are never redelivered, a dead
worker's come back within the lease ttl exactly once, a requeued task runs next.

Every claim is checked from the runs the tasks record in Redis (`tests/apps/delivery_app.py`);
the only clock limits are the issue's own ("within lease ttl + 5 s"), with margins for a
loaded machine, and the measured figures are printed (`pytest -s`)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from tests.conftest import Worker, session_app, wait_for, worker_set

#: The lease ttl of these tests' workers (the default is 30 s).
TTL = 3.0
#: kombu's own sweep every second with a visibility timeout just above the ttl: without the
#: leases, a task longer than it would be handed out again.
KOMBU_LAST_RESORT = {
    "TASKPOOL_LEASE_TTL": str(TTL),
    "TASKPOOL_VISIBILITY_TIMEOUT": "4",
    "TASKPOOL_BROKER_TRANSPORT_OPTIONS": json.dumps(
        {"unacked_restore_interval": 1, "unacked_restore_throttle": 1}
    ),
}


dlv = session_app("tests.apps.delivery_app")


@pytest.fixture
def start_worker(dlv: Any, redis_url: str, tmp_path: Path) -> Iterator[Any]:
    """``start_worker(pool, name, concurrency, wait=True, **env)``: a worker of the delivery app."""
    with worker_set(dlv, redis_url, tmp_path, env=KOMBU_LAST_RESORT) as workers:
        yield workers.start


def runs(dlv: Any, key: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in dlv.app.redis.lrange(f"{key}:runs", 0, -1)]


def starts(dlv: Any, key: str) -> list[dict[str, Any]]:
    return [r for r in runs(dlv, key) if r["event"] == "start"]


def test_late_ack_of_a_taken_over_delivery_keeps_the_next_workers_delivery(redis_client: Any) -> None:
    """The trap of an ack after a restore: the message keeps its delivery tag, so the first
    worker's late ack (it was presumed dead, not dead) must not drop the next worker's delivery."""
    from taskpool.stores.deliveries import DeliveryLeases

    space = f"trap{os.urandom(3).hex()}"
    a, b = (
        DeliveryLeases(redis_client, keyspace=space, owner=o, unacked=(f"{space}:u", f"{space}:ui"))
        for o in "ab"
    )
    tag = "tag-1"

    def deliver(leases: DeliveryLeases, at: float) -> None:
        redis_client.zadd(leases.index_key, {tag: at})
        redis_client.hset(leases.unacked_key, tag, "[message]")
        redis_client.hset(leases.owners_key, tag, leases.owner)

    deliver(a, time.time() - 100)  # a stopped vouching for it 100 s ago
    redis_client.zadd(a.index_key, {"plain-celery": time.time() - 100})  # no owner: plain Celery's
    redis_client.hset(a.unacked_key, "plain-celery", "[message]")
    assert a.refresh([]) == {}
    assert b.claim(ttl=30) == [(tag, "a")]  # b takes it over...
    assert b.claim(ttl=30) == []  # ...once; plain Celery's is left to the visibility timeout
    redis_client.hdel(a.unacked_key, tag)  # b restored it (kombu's restore_by_tag)
    assert b.forget(tag) and b.holder(tag) is None
    deliver(b, time.time())  # and it was delivered again, to b
    assert a.refresh([tag]) == {tag: "b"}  # a learns it is not its own any more
    assert not a.ack(tag)  # a's late ack removes nothing
    assert redis_client.hexists(b.unacked_key, tag) and b.holder(tag) == "b"
    assert b.ack(tag) and not redis_client.hexists(b.unacked_key, tag)
    redis_client.delete(a.unacked_key, a.index_key, a.owners_key)


@pytest.mark.parametrize("step", ["admission", "delivery"])
def test_a_reconnect_restores_only_the_deliveries_still_this_workers(
    redis_url: str, redis_client: Any, step: str
) -> None:
    """At a reconnect the admission gate (requests it dropped) and the delivery leases (held
    messages) put messages back by delivery tag. A restored message keeps its tag: one kombu
    restored when the channel closed may be another worker's delivery by now, under the same tag
    (its owner record names that worker), and must not be pushed again."""
    import kombu

    from taskpool.compat.kombu import install_qos_hooks, unacked_keys
    from taskpool.stores.deliveries import DeliveryLeases
    from taskpool.worker import state
    from taskpool.worker.admission import AdmissionStep
    from taskpool.worker.delivery import DeliveryHooks, DeliveryKeeper, DeliveryStep

    queue_name = f"restore-{os.urandom(4).hex()}"
    connection = kombu.Connection(redis_url, transport_options={"visibility_timeout": 3600})
    try:
        channel = connection.default_channel
        queue = kombu.Queue(queue_name, routing_key=queue_name)
        got: list[Any] = []
        task_consumer = connection.Consumer(queue, callbacks=[lambda body, message: got.append(message)])
        task_consumer.consume()
        consumer = SimpleNamespace(connection=connection, task_consumer=task_consumer)
        leases = DeliveryLeases(redis_client, keyspace=queue_name, owner="w1", unacked=unacked_keys(channel))
        keeper = DeliveryKeeper(DeliveryHooks(leases), ttl=30.0, visibility_timeout=3600.0)
        keeper.channel = install_qos_hooks(consumer, keeper.hooks)
        assert keeper.channel is channel
        with connection.Producer() as producer:
            for n in range(2):
                producer.publish({"n": n}, routing_key=queue_name, declare=[queue])
        while len(got) < 2:
            connection.drain_events(timeout=5)
        task_consumer.cancel()
        mine, taken = (m.delivery_tag for m in got)
        assert leases.holder(mine) == leases.holder(taken) == "w1"
        assert redis_client.llen(queue_name) == 0
        # kombu restored `taken` when the channel closed, and worker w2 took it: same tag, w2's now.
        redis_client.hset(leases.owners_key, taken, "w2")

        parent = SimpleNamespace(task_consumer=task_consumer)
        restorer = AdmissionStep(parent) if step == "admission" else DeliveryStep(parent)
        state.set_deliveries(parent, keeper)
        keeper.start = lambda: None  # type: ignore[method-assign]  # no keeper thread here
        restorer._to_restore = [mine, taken]
        restorer.start(parent)
        assert restorer._to_restore == []

        [entry] = redis_client.lrange(queue_name, 0, -1)  # only `mine` went back on the queue
        assert json.loads(entry)["properties"]["delivery_tag"] == mine
        assert not redis_client.hexists(leases.unacked_key, mine) and leases.holder(mine) is None
        assert redis_client.hexists(leases.unacked_key, taken) and leases.holder(taken) == "w2"
        assert keeper.hooks.held() == []
    finally:
        redis_client.delete(queue_name, f"{queue_name}:deliveries:owners")
        for message in got:
            redis_client.hdel("unacked", message.delivery_tag)
            redis_client.zrem("unacked_index", message.delivery_tag)
        connection.release()


def test_dead_workers_messages_run_again_within_the_lease_ttl_exactly_once(
    dlv: Any, start_worker: Any
) -> None:
    """SIGKILL of a whole worker (main process and children) while it runs two long tasks: the
    other worker, live the whole time, runs each again once, within ttl + 5 s of the kill."""
    key = f"dead-{os.urandom(3).hex()}"
    victim = start_worker("prefork", "victim", 2)
    results = [dlv.hold.delay(key, 600.0, 0.2) for _ in range(2)]
    wait_for(lambda: len(starts(dlv, key)) == 2, 30, what="both tasks to start on the victim")
    rescuer = start_worker("prefork", "rescuer", 2)
    time.sleep(TTL + 1)  # the victim is alive: nothing of it is taken over
    assert len(starts(dlv, key)) == 2
    killed_at = time.time()
    victim.kill_all()
    assert [r.get(timeout=60) for r in results] == [2, 2]
    time.sleep(TTL + 2)  # a second restore would come within this
    first, again = starts(dlv, key)[:2], starts(dlv, key)[2:]
    assert {r["worker"] for r in first} == {victim.hostname}
    assert [r["worker"] for r in again] == [rescuer.hostname] * 2
    assert all(r["redelivered"] for r in again)
    assert Counter(r["id"] for r in starts(dlv, key)) == {r.id: 2 for r in results}
    delays = sorted(r["at"] - killed_at for r in again)
    print(f"\nwhole-worker SIGKILL, lease ttl {TTL:g} s: restarted {delays[0]:.2f}-{delays[-1]:.2f} s later")
    assert delays[-1] < TTL + 5 + 5  # the issue asks ttl + 5 s; 5 s more for a loaded machine
    assert "restored 2 message(s) of worker(s) whose delivery lease expired: victim@test" in rescuer.log()


def test_live_worker_keeps_a_task_longer_than_the_visibility_timeout_and_an_eta_task(
    dlv: Any, start_worker: Any
) -> None:
    """kombu's own sweep runs every second with a visibility timeout of 4 s; a 9 s task and a
    task with a 7 s countdown each run once, though a free pool process could take them again."""
    key = f"long-{os.urandom(3).hex()}"
    worker = start_worker("prefork", "keeper", 3)
    long = dlv.hold.delay(key, 9.0, 0.0)
    eta = dlv.hold.apply_async((key, 0.0, 0.0), countdown=7)
    assert long.get(timeout=60) == 1
    assert eta.get(timeout=60) == 1
    time.sleep(2)
    assert Counter(r["id"] for r in starts(dlv, key)) == {long.id: 1, eta.id: 1}
    assert "whose delivery lease expired" not in worker.log()


def test_requeued_task_of_a_killed_child_runs_next_not_behind_the_backlog(
    dlv: Any, start_worker: Any
) -> None:
    """A prefork child killed mid-task (task_reject_on_worker_lost): its task goes back to the
    head of its queue, so it runs again before the tasks queued after it."""
    key = f"head-{os.urandom(3).hex()}"
    start_worker("prefork", "requeue", 1)
    dying = dlv.die_once.delay(key)
    backlog = [dlv.mark.delay(key, f"m{i}") for i in range(5)]
    assert dying.get(timeout=60) == "survived"
    for r in backlog:
        r.get(timeout=60)
    order = [x.decode() for x in dlv.app.redis.lrange(f"{key}:order", 0, -1)]
    assert order == ["die_once", "die_once", "m0", "m1", "m2", "m3", "m4"]


def test_sigterm_to_the_whole_process_group_lets_running_tasks_finish(dlv: Any, start_worker: Any) -> None:
    """systemd's default KillMode sends SIGTERM to every process of the worker: the pool
    processes finish their tasks (warm shutdown), none runs again."""
    key = f"term-{os.urandom(3).hex()}"
    worker = start_worker("prefork", "termgroup", 2)
    results = [dlv.hold.delay(key, 4.0, 0.0) for _ in range(2)]
    wait_for(lambda: len(starts(dlv, key)) == 2, 30, what="both tasks to start")
    assert worker.process is not None
    os.killpg(worker.pid, signal.SIGTERM)  # the worker has its own process group (launcher)
    assert worker.process.wait(60) == 0
    assert [r.get(timeout=10) for r in results] == [1, 1]
    ends = [r for r in runs(dlv, key) if r["event"] == "end"]
    assert len(ends) == 2 and len(starts(dlv, key)) == 2
    assert "SIGTERM during a warm shutdown: this pool process finishes its task" in worker.log()


def test_revoke_with_terminate_still_stops_a_running_task(dlv: Any, start_worker: Any) -> None:
    """Outside a warm shutdown a pool process obeys SIGTERM (after up to sigterm.TERM_GRACE)."""
    key = f"revoke-{os.urandom(3).hex()}"
    start_worker("prefork", "revoker", 1)
    result = dlv.hold.delay(key, 60.0, 60.0)
    wait_for(lambda: len(starts(dlv, key)) == 1, 30, what="the task to start")
    result.revoke(terminate=True)
    wait_for(lambda: result.state == "REVOKED", 30, what="the task to be revoked")
    assert not [r for r in runs(dlv, key) if r["event"] == "end"]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Any]:
    """A Redis of the test's own (AOF on), to restart; a client app sending to the dlv. queues."""
    from taskpool import TaskPool
    from taskpool.core.settings import Settings
    from taskpool.ops.embedded import RedisServer

    server = RedisServer(tmp_path / "own-redis", appendonly=True).start()
    ctl = TaskPool(
        "dlv-ctl",
        config=False,
        settings=Settings.from_env(broker_url=server.url, queue_prefix="dlv.", keyspace="dlv"),
    )
    yield server, ctl
    server.stop()


def _own_worker(server: Any, ctl: Any, tmp_path: Path, pool: str, name: str) -> Worker:
    w = Worker(
        "tests.apps.delivery_app", pool, server.url, tmp_path, concurrency=2, name=name, env=KOMBU_LAST_RESORT
    )
    return w.start(ctl)


def test_countdown_task_held_across_a_redis_restart_runs_once(own_redis: Any, tmp_path: Path) -> None:
    """Redis restarts while a worker holds a countdown task: Celery's ``on_close`` cancels its
    timer and forgets it; taskpool puts it back on the queue at the reconnect, so it runs, once
    (left held, the keeper vouched for it forever: lost)."""
    server, ctl = own_redis
    key = f"eta-{os.urandom(3).hex()}"
    worker = _own_worker(server, ctl, tmp_path, "prefork", "eta-restart")
    try:
        result = ctl.send_task(
            "tests.apps.delivery_app.hold", (key, 0.0, 0.0), queue="dlv.prefork", countdown=8
        )
        wait_for(lambda: "received" in worker.log(), 30, what="the worker to hold the countdown task")
        server.stop()  # SIGTERM: the AOF is flushed
        time.sleep(1.0)
        server.start()
        assert result.get(timeout=90) == 1
        time.sleep(TTL + 3)  # a wrong restore would run it again by now
        client = redis.Redis(port=server.port)
        assert int(client.hget(f"{key}:starts", result.id) or 0) == 1
        assert worker.process is not None and worker.process.poll() is None, worker.log()[-3000:]
        assert "held message(s) go back on the queue at the reconnect" in worker.log()
    finally:
        worker.stop()


def test_threads_task_that_ends_while_redis_is_down_runs_once(own_redis: Any, tmp_path: Path) -> None:
    """A task ends while Redis is down: its ack cannot reach Redis. Its delivery stays held (the
    keeper vouches for it) and is acked when Redis is back, so no worker restores it: it runs once
    (dropped at the failed ack, it was restored a lease ttl later and ran twice)."""
    server, ctl = own_redis
    key = f"down-{os.urandom(3).hex()}"
    worker = _own_worker(server, ctl, tmp_path, "threads", "ack-down")
    client = redis.Redis(port=server.port)
    try:
        result = ctl.send_task("tests.apps.delivery_app.sleep_threads", (key, 2.0), queue="dlv.threads")
        wait_for(lambda: client.hlen(f"{key}:starts") == 1, 30, what="the task to start")
        server.stop()
        client.close()
        time.sleep(5.0)  # the task ends ~2 s into the outage
        assert f"sleep_threads[{result.id}] succeeded" in worker.log()  # ended, Redis still down
        server.start()
        time.sleep(TTL * 2 + 3)  # past a lease ttl and a sweep: a restored delivery would have run by now
        client = redis.Redis(port=server.port)
        assert [int(v) for v in client.hvals(f"{key}:starts")] == [1]
        assert "taken over" not in worker.log() and "restored by another worker" not in worker.log()
        assert worker.process is not None and worker.process.poll() is None, worker.log()[-3000:]
    finally:
        worker.stop()
        client.close()
