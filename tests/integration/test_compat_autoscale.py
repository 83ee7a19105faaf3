"""The Celery, kombu and billiard internals taskpool.compat relies on: each test fails loudly when
the installed library changes the attribute, method or call it names."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from collections import Counter
from types import SimpleNamespace
from typing import Any

from taskpool.compat.billiard import child_pids
from taskpool.compat.celery import (
    gevent_free_slots,
    inner_pool,
    pool_size,
    sync_pool_limit,
    update_prefetch_count,
)


# -- autoscale (taskpool.worker.autoscale) ---------------------------------------------------------
def test_autoscale_celery_prefork_pool_keeps_billiards_pool_in__pool() -> None:
    from celery.concurrency.base import BasePool
    from celery.concurrency.prefork import TaskPool

    assert inner_pool(BasePool(1)) is None  # BasePool._pool declared None until a pool starts
    made: list[Any] = []

    class Recorder:
        def __init__(self, **options: Any) -> None:
            self._processes = options["processes"]
            made.append(self)

        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: None  # apply_async, maintain_pool, grow, shrink, ...

    pool = TaskPool(3)
    pool.BlockingPool = pool.Pool = Recorder  # type: ignore[misc]
    pool.on_start()
    assert made and inner_pool(pool) is made[0]
    assert pool_size(pool) == 3  # prefork's num_processes reads billiard's Pool._processes
    made[0]._processes = 5  # what billiard's grow does
    assert pool_size(pool) == 5 and pool.limit == 3
    sync_pool_limit(pool)
    assert pool.limit == 5


def run_script(script: str) -> Any:
    """Run ``script`` in a fresh interpreter; returns the JSON its last line prints.

    Pools that fork (billiard) or need gevent run there: the test process stays gevent-free, and a
    billiard pool forked from it after tests/test_cli.py (and a first pool) had children that
    never ran a job, so the result depended on the tests run before.
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_autoscale_billiard_pool_lists_its_processes_in__pool() -> None:
    from billiard.pool import Pool

    assert list(inspect.signature(Pool.grow).parameters) == ["self", "n"]
    assert list(inspect.signature(Pool.shrink).parameters) == ["self", "n"]
    assert child_pids(object()) == [] and child_pids(None) == []
    out = run_script(
        """
        import json, time
        from billiard.pool import Pool
        from taskpool.compat.billiard import child_pids

        pool = Pool(processes=1)
        try:
            out = {"processes": pool._processes, "pids": child_pids(pool) == [p.pid for p in pool._pool]}
            out["count"] = len(child_pids(pool))
            pool.grow(1)
            out["grown"] = pool._processes
            pool.maintain_pool()
            deadline = time.monotonic() + 10
            while len(child_pids(pool)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            out["after"] = [isinstance(pid, int) and pid > 0 for pid in child_pids(pool)]
        finally:
            pool.terminate()
        print(json.dumps(out))
        """
    )
    assert out == {"processes": 1, "pids": True, "count": 1, "grown": 2, "after": [True, True]}


def test_autoscale_billiard_shrink_refuses_busy_processes_with_value_error() -> None:
    out = run_script(
        """
        import json, os, sys, tempfile, time
        from billiard.pool import Pool

        release = os.path.join(tempfile.mkdtemp(), "release")

        def hold() -> None:  # runs in the child until the parent releases it
            deadline = time.monotonic() + 30
            while not os.path.exists(release) and time.monotonic() < deadline:
                time.sleep(0.02)

        pool = Pool(processes=1)
        try:
            result = pool.apply_async(hold)
            deadline = time.monotonic() + 20
            while not any(j.worker_pids() for j in list(pool._cache.values())):
                assert time.monotonic() < deadline, "the job never started"
                time.sleep(0.02)
            try:
                pool.shrink(1)  # the autoscaler shrinks one at a time and stops at this error
                out = {"error": None}
            except ValueError as exc:
                out = {"error": str(exc)}
            out["processes"] = pool._processes
            open(release, "w").close()
            result.get(timeout=20)
        finally:
            open(release, "w").close()
            pool.terminate()
        print(json.dumps(out))
        """
    )
    assert out == {"error": "Can't shrink pool. All processes busy!", "processes": 1}


def test_autoscale_celery_gevent_pool_wraps_a_gevent_pool() -> None:
    # The test process stays gevent-free.
    out = run_script(
        """
        import json
        import gevent
        import gevent.pool
        from celery.concurrency.gevent import TaskPool
        from taskpool.compat.celery import gevent_free_slots, inner_pool, pool_size

        pool = TaskPool(3)
        before = inner_pool(pool)
        pool.on_start()
        out = {"before": before is None, "is_gevent": isinstance(inner_pool(pool), gevent.pool.Pool)}
        out["free"] = gevent_free_slots(pool)
        inner_pool(pool).spawn(gevent.sleep, 5)
        out["busy"] = gevent_free_slots(pool)
        pool.grow(1)
        out["grown"] = [gevent_free_slots(pool), pool_size(pool)]
        pool.shrink(2)
        out["shrunk"] = [gevent_free_slots(pool), pool_size(pool)]
        print(json.dumps(out))
        """
    )
    assert out == {"before": True, "is_gevent": True, "free": 3, "busy": 2, "grown": [3, 4], "shrunk": [1, 2]}


def test_autoscale_gevent_free_slots_is_none_elsewhere() -> None:
    from celery.concurrency.base import BasePool

    assert gevent_free_slots(BasePool(2)) is None
    assert gevent_free_slots(SimpleNamespace(_pool=SimpleNamespace(_pool=[]))) is None


def test_autoscale_consumer_update_prefetch_count_widens_the_qos() -> None:
    from celery.worker.consumer.consumer import Consumer
    from kombu.common import QoS

    assert list(inspect.signature(Consumer._update_prefetch_count).parameters) == ["self", "index"]
    applied: list[int] = []
    consumer: Any = SimpleNamespace(
        pool=SimpleNamespace(num_processes=4),
        initial_prefetch_count=4,
        prefetch_multiplier=2,
        qos=QoS(applied.append, 4),
    )
    consumer._update_qos_eventually = lambda index: Consumer._update_qos_eventually(consumer, index)
    consumer._update_prefetch_count = lambda index: Consumer._update_prefetch_count(consumer, index)
    update_prefetch_count(consumer, 2)
    assert consumer.qos.value == 8  # 2 slots x multiplier 2
    update_prefetch_count(consumer, -1)
    assert consumer.qos.value == 6
    assert consumer.initial_prefetch_count == 8  # num_processes x multiplier
    update_prefetch_count(None, 3)  # no worker consumer yet: nothing to do
    update_prefetch_count(SimpleNamespace(qos=None), 3)


def test_autoscale_celery_autoscaler_contract() -> None:
    """What CallbackAutoscaler inherits and overrides from celery.worker.autoscale.Autoscaler."""
    from celery.worker.autoscale import Autoscaler

    params = list(inspect.signature(Autoscaler.__init__).parameters)
    assert params == ["self", "pool", "max_concurrency", "min_concurrency", "worker", "keepalive", "mutex"]
    assert isinstance(Autoscaler.processes, property) and isinstance(Autoscaler.qty, property)
    for name in ("body", "maybe_scale", "on_task_received", "update", "info"):
        assert callable(getattr(Autoscaler, name)), name


def test_autoscale_celery_calls_maybe_scale_on_the_hub_and_per_message() -> None:
    """Event-loop pools: the hub calls maybe_scale() every keepalive, each message maybe_scale(req)."""
    from celery.worker.autoscale import WorkerComponent

    scaler = SimpleNamespace(keepalive=1.0, maybe_scale=lambda req=None: None)
    consumer = SimpleNamespace(on_task_message=set())
    w: Any = SimpleNamespace(autoscale=True, use_eventloop=True, consumer=consumer)
    step = WorkerComponent(w)
    w.autoscaler = scaler
    timers: list[tuple[Any, ...]] = []
    hub = SimpleNamespace(call_repeatedly=lambda *args: timers.append(args))
    step.register_with_event_loop(w, hub)
    assert timers == [(1.0, scaler.maybe_scale)]
    assert w.consumer.on_task_message == {scaler.maybe_scale}


def test_autoscale_celery_calls_on_task_received_without_event_loop() -> None:
    """gevent: WorkerComponent.start hooks on_task_received to every task message."""
    import celery.worker.strategy
    from celery.worker.autoscale import WorkerComponent

    scaler = SimpleNamespace(on_task_received=lambda req: None)
    consumer = SimpleNamespace(on_task_message=set())
    w: Any = SimpleNamespace(autoscale=True, use_eventloop=False, consumer=consumer)
    step = WorkerComponent(w)
    w.autoscaler = scaler
    step.start(w)
    assert w.consumer.on_task_message == {scaler.on_task_received}
    # The task strategy calls consumer.on_task_message's callbacks with each new request.
    source = inspect.getsource(celery.worker.strategy.default)
    assert "[callback(req) for callback in callbacks]" in source


def test_autoscale_worker_state_counters() -> None:
    """The counters the autoscaler reads from celery.worker.state."""
    from celery.worker import state

    assert len(state.active_requests) >= 0 and len(state.reserved_requests) >= 0
    assert isinstance(state.total_count, Counter)
