"""Flow control through real workers: keyed limits, cluster-wide rates, stacked limits.

Bounds are checked from each run's records: intervals for limits, and for rates the time the
admission gate took the run's token (Redis clock, ``taskpool_rate_at``), which is what the rate
promises; a task's own start follows it by the dispatch time.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskpool.core.errors import ConfigurationError
from taskpool.stores.queues import queue_depth
from taskpool.stores.semaphores import Semaphore, holders_of
from tests.conftest import Worker, most_at_once, records, session_app, taskpool_cli, wait_for, worker_set

flow = session_app("tests.apps.flow_app")


@pytest.fixture
def start_worker(flow: Any, redis_url: str, tmp_path: Path) -> Iterator[Any]:
    """``start_worker(name, concurrency, pool="threads", **env)``: a worker of the flow app, ready."""
    with worker_set(flow, redis_url, tmp_path) as workers:

        def start(name: str, concurrency: int, pool: str = "threads", **env: str) -> Worker:
            return workers.start(pool, name, concurrency, **env)

        yield start


def most_in_a_second(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for u in times if t <= u < t + 1.0) for t in times)


def test_a_keyed_limit_holds_per_key_while_other_keys_run(flow: Any, start_worker: Any) -> None:
    # One key sized by `taskpool limits set` (stored), the others by the declaration (2).
    done = taskpool_cli("tests.apps.flow_app", "limits", "set", "tenant:big", "3")
    assert done.returncode == 0, done.stderr
    start_worker("t1", 12)
    key = f"tenants-{os.urandom(3).hex()}"
    calls = [(t, 6) for t in ("acme", "beta", "big")]
    results = [flow.per_tenant.delay(t, key, 0.4) for t, n in calls for _ in range(n)]
    for r in results:
        r.get(timeout=60)
    entries = records(flow, key, 18)
    by_tenant = {t: [e for e in entries if e["tenant"] == t] for t, _ in calls}
    assert most_at_once(by_tenant["acme"]) == 2
    assert most_at_once(by_tenant["beta"]) == 2
    assert most_at_once(by_tenant["big"]) == 3
    assert most_at_once(entries) >= 5  # the keys ran side by side: one key's backlog held no other


def test_a_task_wanting_several_slots_is_not_passed_by_later_smaller_ones(
    flow: Any, start_worker: Any
) -> None:
    # `wide` takes all 3 slots of flow:shared, `narrow` one. Three narrow runs hold the slots and
    # end one by one; every narrow run sent after `wide` lined up waits for it, on both workers.
    done = taskpool_cli("tests.apps.flow_app", "limits", "set", "flow:shared", "3")
    assert done.returncode == 0, done.stderr
    start_worker("f1", 4)
    start_worker("f2", 4)
    sem = Semaphore(flow.app.redis, "limit:flow:shared", 3, keyspace="flow")
    key = f"fair-{os.urandom(3).hex()}"
    first = [flow.narrow.delay(key, seconds, -1) for seconds in (0.6, 1.2, 1.8)]
    wait_for(lambda: len(holders_of(flow.app.redis, sem.name, "flow")) == 3, what="3 narrow runs")
    wide = flow.wide.delay(key, 0.3)
    wait_for(lambda: [n for _, n, _ in sem.waiters()] == [3], what="wide in line for 3 slots")
    later = [flow.narrow.delay(key, 0.3, i) for i in range(8)]
    for r in [*first, wide, *later]:
        r.get(timeout=60)
    entries = records(flow, key, 12)
    (wide_run,) = [e for e in entries if e["kind"] == "wide"]
    after = [e for e in entries if e["kind"] == "narrow" and e["n"] >= 0]
    assert len(after) == 8
    assert min(e["start"] for e in after) >= wide_run["end"] - 0.05  # none passed it (clock: ms)
    slots = [e["start"] for e in entries]
    in_use = [
        sum(3 if e["kind"] == "wide" else 1 for e in entries if e["start"] <= t < e["end"]) for t in slots
    ]
    assert max(in_use) <= 3
    assert sem.waiters() == []


def test_a_missing_key_parameter_is_an_error_at_delay(flow: Any) -> None:
    queue = flow.app.settings.queue_for("threads")
    before = queue_depth(flow.app.redis, queue)
    with pytest.raises(ConfigurationError) as info:
        flow.per_tenant.delay(key="k", seconds=0.1)
    message = str(info.value)
    assert "tests.apps.flow_app.per_tenant" in message and "limits" in message and "'tenant_id'" in message
    assert queue_depth(flow.app.redis, queue) == before  # nothing was sent


def test_a_rate_holds_across_two_workers(flow: Any, start_worker: Any) -> None:
    start_worker("r1", 4)
    start_worker("r2", 4)
    key = f"rate-{os.urandom(3).hex()}"
    n = 120  # 3 s at 40/s
    for r in [flow.rated.delay(key) for _ in range(n)]:
        r.get(timeout=60)
    entries = records(flow, key, n)
    assert {e["worker"] for e in entries} == {"r1@test", "r2@test"}
    granted = [e["rate_at"] for e in entries]
    assert all(t is not None for t in granted)
    assert most_in_a_second(granted) <= 40 * 1.01
    assert most_in_a_second(granted) >= 39  # and the rate is used, not starved


def test_a_task_waiting_for_a_rate_uses_no_retry(flow: Any, start_worker: Any) -> None:
    start_worker("w1", 4)
    key = f"slow-{os.urandom(3).hex()}"
    for r in [flow.slow_rated.delay("x", key) for _ in range(8)]:
        r.get(timeout=60)
    entries = records(flow, key, 8)
    assert [e["retries"] for e in entries] == [0] * 8
    granted = sorted(e["rate_at"] for e in entries)
    gaps = [b - a for a, b in itertools.pairwise(granted)]
    assert min(gaps) >= 0.25 - 0.002  # 4/s: each waited its turn in the gate


def test_rate_concurrency_and_gpu_slots_stacked_hold_every_bound(flow: Any, start_worker: Any) -> None:
    start_worker("s1", 4, TASKPOOL_GPUS="4")
    start_worker("s2", 4, TASKPOOL_GPUS="4")
    key = f"stack-{os.urandom(3).hex()}"
    for r in [flow.stacked.delay(key, 0.5) for _ in range(16)]:
        r.get(timeout=90)
    entries = records(flow, key, 16)
    assert most_at_once(entries) == 3  # cluster_max_in_flight=3 (the rate alone allows 5)
    assert most_in_a_second([e["rate_at"] for e in entries]) <= 10
    for e in entries:  # two overlapping runs never share a GPU slot of the (shared) host
        others = [o for o in entries if o is not e and o["start"] < e["end"] and e["start"] < o["end"]]
        assert all(not set(o["gpus"]) & set(e["gpus"]) for o in others), (e, others)
        assert len(e["gpus"]) == 1


def test_celerys_own_rate_limit_works_next_to_limits(flow: Any, start_worker: Any) -> None:
    start_worker("c1", 4)
    key = f"celery-rate-{os.urandom(3).hex()}"
    for r in [flow.celery_rated.delay(key) for _ in range(6)]:
        r.get(timeout=60)
    starts = sorted(e["start"] for e in records(flow, key, 6))
    assert starts[-1] - starts[0] >= 5 * 0.2 * 0.95  # Celery's bucket of 5/s spaced them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_wait_has_a_reason_in_stats_status_and_metrics(flow: Any, start_worker: Any) -> None:
    port = free_port()
    worker = start_worker("waits", 4, TASKPOOL_METRICS_PORT=str(port))
    key = f"waits-{os.urandom(3).hex()}"
    tenant = f"w{os.urandom(2).hex()}"
    results = [flow.per_tenant.delay(tenant, key, 2.0) for _ in range(3)]  # 2 run, 1 waits
    orphan = flow.orphan.delay()  # no prefork worker runs: its queue has no consumer

    def waits() -> list[dict[str, Any]]:
        stats = flow.app.control.inspect([worker.hostname], timeout=1.0).stats() or {}
        return list((stats.get(worker.hostname) or {}).get("taskpool", {}).get("waits") or [])

    found = wait_for(waits, 20, what="a waiting request in inspect stats")
    assert isinstance(found, list)
    (row,) = found
    assert row["task"] == "tests.apps.flow_app.per_tenant"
    assert row["reason"] == f"limit tenant:{tenant} 2/2" and row["count"] == 1
    assert row["kind"] == "limit" and row["key"] == f"tenant:{tenant}" and row["oldest_wait"] >= 0
    shown = taskpool_cli("tests.apps.flow_app", "status")
    assert shown.returncode == 0, shown.stderr
    assert "waiting" in shown.stdout and f"limit tenant:{tenant} 2/2" in shown.stdout, shown.stdout
    assert "no worker consumes flow.prefork" in shown.stdout, shown.stdout
    # The key's semaphore, its declared size (2) and the 2 slots in use.
    assert re.search(rf"limit:tenant:{tenant}\s*│\s*2\s*│\s*2\s*│", shown.stdout), shown.stdout
    for r in results:
        r.get(timeout=60)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'taskpool_wait_seconds_count{reason="limit"} 1.0' in metrics, metrics
    assert 'taskpool_wait_seconds_bucket{le="0.5",reason="limit"} 0.0' in metrics  # it waited ~2 s
    # The key's semaphore costs nothing once idle: every key of it expires.
    sem_keys = flow.app.redis.keys(f"flow:sem:{{limit:tenant:{tenant}}}:*")
    assert sem_keys and all(flow.app.redis.pttl(k) > 0 for k in sem_keys), sem_keys
    orphan.forget()
    flow.app.redis.delete("flow.prefork")


def test_eager_calls_wait_for_their_rate_tokens_too(flow: Any) -> None:
    key = f"eager-{os.urandom(3).hex()}"
    name = f"e{os.urandom(2).hex()}"  # a rate key of its own: 4/s
    for _ in range(3):
        flow.slow_rated.apply(args=(name, key)).get()
    starts = sorted(e["start"] for e in records(flow, key, 3))
    assert starts[-1] - starts[0] >= 2 * 0.25 * 0.95


def test_a_message_that_cannot_fill_a_keyed_name_fails_with_a_dead_letter(
    flow: Any, start_worker: Any
) -> None:
    start_worker("d1", 2)
    before = flow.app.dead_letters.count()
    # send_task skips the check at .delay(): the worker refuses it instead of crashing.
    result = flow.app.send_task("tests.apps.flow_app.per_tenant", kwargs={"key": "k", "seconds": 0})
    with pytest.raises(ConfigurationError, match="needs the argument 'tenant_id'"):
        result.get(timeout=30)
    assert flow.app.dead_letters.count() == before + 1
    ok = flow.per_tenant.delay("after", f"after-{os.urandom(3).hex()}", 0.0)
    assert ok.get(timeout=30)["tenant"] == "after"  # the worker goes on


def test_a_rate_holds_on_gevent_workers(flow: Any, start_worker: Any) -> None:
    start_worker("g1", 20, pool="gevent")
    start_worker("g2", 20, pool="gevent")
    key = f"gevent-{os.urandom(3).hex()}"
    for r in [flow.rated_gevent.delay(f"t{i % 3}", key) for i in range(60)]:
        r.get(timeout=60)
    granted = [e["rate_at"] for e in records(flow, key, 60)]
    assert most_in_a_second(granted) <= 20
    assert most_in_a_second(granted) >= 19
