"""Through real `celery worker` processes, one per pool, on the session's own Redis."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from tests.conftest import Worker, wait_for


def test_each_task_runs_on_a_worker_of_its_pool(tp_app: Any, pool_workers: dict[str, Worker]) -> None:
    facts = {
        "prefork": tp_app.where_prefork.delay(),
        "threads": tp_app.where_threads.delay(),
        "gevent": tp_app.where_gevent.delay(),
    }
    got = {pool: res.get(timeout=20) for pool, res in facts.items()}
    for pool, res in facts.items():
        assert res.worker == f"{pool}@test", (pool, res.worker)
        assert got[pool]["worker_pool"] == pool

    prefork = got["prefork"]
    assert prefork["process_name"].startswith("ForkPoolWorker"), prefork
    assert prefork["ppid"] == pool_workers["prefork"].pid  # a child of that worker, not the worker itself

    threads = got["threads"]
    assert threads["pid"] == pool_workers["threads"].pid
    assert not threads["main_thread"] and not threads["gevent_patched"], threads

    gevent = got["gevent"]
    assert gevent["pid"] == pool_workers["gevent"].pid
    assert gevent["gevent_patched"] and gevent["in_greenlet"], gevent


def test_workers_consume_only_their_pools_queue(pool_workers: dict[str, Worker]) -> None:
    for pool, worker in pool_workers.items():
        log = worker.log()
        assert f"taskpool: {pool} worker consuming taskpool.{pool};" in log
        others = {"prefork", "threads", "gevent"} - {pool}
        for other in others:
            assert f".> taskpool.{other} " not in log, (pool, other)


@pytest.mark.parametrize("pool", ["prefork", "threads", "gevent"])
def test_async_task_on_each_pool_keeps_one_loop_per_process_or_thread(
    tp_app: Any, pool_workers: dict[str, Worker], pool: str
) -> None:
    task = getattr(tp_app, f"async_{pool}")
    sent = [task.delay() for _ in range(8)]
    results = [r.get(timeout=20) for r in sent]
    loops: dict[Any, set[int]] = {}
    for res, facts in zip(sent, results, strict=True):
        assert facts["worker_pool"] == pool
        assert facts["request_id"] == res.id  # task.request inside the coroutine is this call's
        assert facts["current_task_id"] == res.id  # and so is celery.current_task
        assert facts["current_task_hostname"] == f"{pool}@test"
        # gevent: one loop for the whole worker; prefork: per child; threads: per thread.
        where = facts["pid"] if pool != "threads" else (facts["pid"], facts["thread"])
        loops.setdefault(where, set()).add(facts["loop_id"])
    assert all(len(ids) == 1 for ids in loops.values()), loops
    # 8 calls over at most 4 places: some place ran several, and reused its loop.
    assert len(loops) < len(results)


def test_async_tasks_on_gevent_overlap(tp_app: Any, pool_workers: dict[str, Worker]) -> None:
    """Async tasks on a gevent worker run concurrently, not one after another (from records)."""
    intervals = [res.get(timeout=30) for res in [tp_app.async_sleep.delay(0.5) for _ in range(10)]]
    assert all(end - start >= 0.5 for start, end in intervals)
    most = max(sum(1 for s, e in intervals if s <= t < e) for t, _ in intervals)
    assert most >= 5, intervals


def test_gated_gevent_task_runs_max_in_flight_at_once_and_waiters_take_no_slot(
    tp_app: Any, pool_workers: dict[str, Worker]
) -> None:
    """max_in_flight=N on a gevent worker runs exactly N at once (from recorded intervals), and
    the requests waiting for the gate hold no greenlet: an ungated task sent after the whole gated
    backlog starts before the backlog's last task."""
    n = tp_app.GATED_GEVENT_MAX
    gated = [tp_app.gated_sleep.delay(0.4) for _ in range(4 * n)]
    ungated = tp_app.stamp.delay()
    intervals = [res.get(timeout=60) for res in gated]
    overlap = max(sum(1 for s, e in intervals if s <= t < e) for t, _ in intervals)
    assert overlap == n, intervals
    assert ungated.get(timeout=60) < max(start for start, _ in intervals)


def test_chain_across_three_pools(tp_app: Any, pool_workers: dict[str, Worker]) -> None:
    result = (tp_app.add.s(1, 2) | tp_app.double.s() | tp_app.tag.s()).delay()
    assert result.get(timeout=30) == "result=6"
    # Celery sends a chain's next step before it stores the step's own result: wait for it.
    wait_for(lambda: result.parent.ready() and result.parent.parent.ready(), 10, what="parent results")
    assert result.worker == "threads@test"
    assert result.parent.worker == "prefork@test"
    assert result.parent.parent.worker == "gevent@test"


def test_sigkill_of_prefork_child_mid_task_does_not_lose_it(
    tp_app: Any, pool_workers: dict[str, Worker]
) -> None:
    r = tp_app.app.redis
    key = f"slow-{os.urandom(4).hex()}"
    result = tp_app.slow.delay(key, 1.5)
    first = wait_for(lambda: r.lindex(f"{key}:pids", 0), timeout=20, what="the task to start")
    victim = int(first)
    assert victim != pool_workers["prefork"].pid
    os.kill(victim, signal.SIGKILL)
    # The child's task goes back to the queue (late ack + reject on worker lost) and runs again.
    assert result.get(timeout=60) == 2
    pids = [int(p) for p in r.lrange(f"{key}:pids", 0, -1)]
    assert pids[0] == victim and pids[1] != victim
    assert result.status == "SUCCESS"
