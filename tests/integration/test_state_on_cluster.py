"""taskpool's state on a Redis Cluster (``TASKPOOL_STATE_URL=redis+cluster://...``, three masters)
while Celery's broker is the session's single redis-server: real workers hold a limit (its size
set by `taskpool limits set` on the Cluster, freed by prefork children), a keyed limit,
``cluster_max_in_flight`` across two workers and two rates; the CLI reads the Cluster; a failed
task's dead letter lands there. Bounds are checked from each run's records (kept on the Cluster).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import redis

from taskpool.ops.embedded import ClusterGroup, RedisServer, free_cluster_port
from taskpool.ops.launcher import launch
from taskpool.stores.dead_letters import DeadLetterStore
from taskpool.stores.limits import LimitStore
from taskpool.stores.semaphores import holders_of, semaphore_names
from tests.conftest import ROOT, most_at_once, records, taskpool_cli, wait_for, worker_set

KEYSPACE = "cstate"
BROKER_DB = 12  # this module's own database of the session's Redis: what the broker holds is seen alone


@pytest.fixture(scope="module")
def state_url(redis_cluster: ClusterGroup) -> str:
    return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in redis_cluster.servers)


@pytest.fixture(scope="module")
def broker_url(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + f"/{BROKER_DB}"


@pytest.fixture(scope="module")
def env(broker_url: str, state_url: str) -> dict[str, str]:
    return {"TASKPOOL_BROKER_URL": broker_url, "TASKPOOL_STATE_URL": state_url}


@pytest.fixture(scope="module")
def cs(env: dict[str, str], redis_cluster: ClusterGroup) -> Any:
    with mock.patch.dict(os.environ, env):
        module = importlib.import_module("tests.apps.cluster_state_app")
    assert module.app.settings.state_url == env["TASKPOOL_STATE_URL"]
    assert module.app.conf.broker_url == env["TASKPOOL_BROKER_URL"]
    return module


@pytest.fixture(scope="module")
def cluster(redis_cluster: ClusterGroup) -> Iterator[Any]:
    client = redis_cluster.client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def broker(broker_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(broker_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def workers(
    cs: Any, env: dict[str, str], broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A prefork worker and two threads workers, broker on the single Redis, state on the Cluster."""
    with worker_set(cs, broker_url, tmp_path_factory.mktemp("cstate-logs"), env=env) as started:
        set_size = taskpool_cli("tests.apps.cluster_state_app", "limits", "set", "cs:shared", "2", env=env)
        assert set_size.returncode == 0, set_size.stderr
        set_size = taskpool_cli("tests.apps.cluster_state_app", "limits", "set", "cs:hold", "1", env=env)
        assert set_size.returncode == 0, set_size.stderr
        started.start("prefork", "cp1", 3)
        started.start("threads", "ct1", 4)
        started.start("threads", "ct2", 4)
        yield started


def most_in_a_second(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for u in times if t <= u < t + 1.0) for t in times)


def test_the_state_client_is_a_cluster_client_and_the_brokers_is_not(cs: Any) -> None:
    from redis.cluster import RedisCluster

    assert isinstance(cs.app.redis, RedisCluster)
    assert isinstance(cs.app.broker_redis, redis.Redis)
    assert cs.app.broker_redis.connection_pool.connection_kwargs["db"] == BROKER_DB


def test_limits_sizes_set_by_the_cli_live_on_the_cluster(
    cs: Any, workers: Any, cluster: Any, broker: Any
) -> None:
    assert LimitStore(cluster, KEYSPACE).all() == {"cs:shared": 2, "cs:hold": 1}
    assert not broker.exists(f"{KEYSPACE}:limits")
    listing = taskpool_cli("tests.apps.cluster_state_app", "limits", "ls", env=workers.env)
    assert listing.returncode == 0, listing.stderr
    assert "cs:shared" in listing.stdout and "cs:hold" in listing.stdout


def test_a_limit_holds_and_prefork_children_free_it_on_the_cluster(
    cs: Any, workers: Any, cluster: Any
) -> None:
    key = f"limited-{os.urandom(3).hex()}"
    for r in [cs.limited.delay(key, 0.3) for _ in range(8)]:
        r.get(timeout=60)
    entries = records(cs, key, 8)
    assert most_at_once(entries) == 2  # the stored size, read from the Cluster
    name = "limit:cs:shared"
    wait_for(lambda: holders_of(cluster, name, KEYSPACE) == [], what="every slot of cs:shared freed")


def test_a_keyed_limit_holds_per_key(cs: Any, workers: Any) -> None:
    key = f"tenants-{os.urandom(3).hex()}"
    results = [cs.per_tenant.delay(t, key, 0.3) for t in ("acme", "beta") for _ in range(6)]
    for r in results:
        r.get(timeout=60)
    entries = records(cs, key, 12)
    for tenant in ("acme", "beta"):
        assert most_at_once([e for e in entries if e["tenant"] == tenant]) == 2
    assert most_at_once(entries) >= 3  # the two keys ran side by side


def test_cluster_max_in_flight_holds_across_two_workers(cs: Any, workers: Any) -> None:
    key = f"capped-{os.urandom(3).hex()}"
    for r in [cs.capped.delay(key, 0.4) for _ in range(12)]:
        r.get(timeout=60)
    entries = records(cs, key, 12)
    assert most_at_once(entries) == 3
    assert {e["worker"] for e in entries} == {"ct1@test", "ct2@test"}


def test_two_rates_hold_across_two_workers(cs: Any, workers: Any) -> None:
    key = f"rated-{os.urandom(3).hex()}"
    n = 30  # 3 s at 10/s
    for r in [cs.rated.delay(key) for _ in range(n)]:
        r.get(timeout=60)
    entries = records(cs, key, n)
    granted = [e["rate_at"] for e in entries]
    assert all(t is not None for t in granted)
    assert most_in_a_second(granted) <= 10


def test_slots_and_status_read_the_state_from_the_cluster(
    cs: Any, workers: Any, cluster: Any, broker: Any, state_url: str
) -> None:
    key = f"hold-{os.urandom(3).hex()}"
    held = cs.hold.delay(key, 4.0)
    wait_for(lambda: holders_of(cluster, "limit:cs:hold", KEYSPACE), what="the hold task holding its slot")
    slots = taskpool_cli("tests.apps.cluster_state_app", "slots", env=workers.env)
    assert slots.returncode == 0, slots.stderr
    assert "limit:cs:hold" in slots.stdout and held.id in slots.stdout
    status = taskpool_cli("tests.apps.cluster_state_app", "status", env=workers.env)
    assert status.returncode == 0, status.stderr
    assert f"state at {state_url}" in " ".join(status.stdout.split())
    assert "limit:cs:hold" in status.stdout
    listing = taskpool_cli("tests.apps.cluster_state_app", "limits", "ls", env=workers.env)
    hold_row = next(line for line in listing.stdout.splitlines() if "cs:hold" in line)
    assert "ct1@test" in hold_row or "ct2@test" in hold_row  # its holder, read from the Cluster
    assert "limit:cs:hold" in semaphore_names(cluster, KEYSPACE)  # the semaphore is on the Cluster
    held.get(timeout=30)
    # Nothing of the state is on the broker's Redis: only kombu's keys and the delivery leases.
    assert next(broker.scan_iter(match="celery-task-meta-*"), None)  # the broker's (results) database
    on_broker = [k.decode() for k in broker.scan_iter(match=f"*{KEYSPACE}:*")]
    assert [k for k in on_broker if not k.startswith(f"{KEYSPACE}:deliveries:")] == []


def test_a_failed_tasks_dead_letter_lands_on_the_cluster(
    cs: Any, workers: Any, cluster: Any, broker: Any
) -> None:
    store = DeadLetterStore(cluster, KEYSPACE)
    result = cs.fails.delay(7)
    with pytest.raises(ValueError):
        result.get(timeout=30)
    wait_for(lambda: any(d.task_id == result.id for d in store.list()), what="the dead letter on the Cluster")
    assert not broker.exists(f"{{{KEYSPACE}:dead}}")
    listing = taskpool_cli("tests.apps.cluster_state_app", "dead", "ls", env=workers.env)
    assert listing.returncode == 0, listing.stderr
    (letter,) = [d for d in store.list() if d.task_id == result.id]
    assert letter.id in listing.stdout


def test_an_unreachable_cluster_state_is_one_line_naming_both_urls_password_masked(broker_url: str) -> None:
    env = {"TASKPOOL_BROKER_URL": broker_url, "TASKPOOL_STATE_URL": "redis+cluster://:hunter2@127.0.0.1:1"}
    done = taskpool_cli("tests.apps.cluster_state_app", "slots", env=env)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr
    assert "the state's Redis at redis+cluster://:**@127.0.0.1:1" in " ".join(done.stderr.split())
    assert "TASKPOOL_STATE_URL" in done.stderr


def test_a_worker_waits_for_its_state_cluster_to_answer(broker_url: str, tmp_path: Path) -> None:
    """A Redis Cluster client asks its seed nodes for the layout when it is made: a worker whose
    state Cluster does not answer yet waits for it (a warning per try), then starts and uses it."""
    port = free_cluster_port()
    log = tmp_path / "late.log"
    env = {**os.environ, "TASKPOOL_STATE_URL": f"redis+cluster://127.0.0.1:{port}"}
    argv = [sys.executable, "-m", "celery", "-A", "tests.apps.cluster_state_app", "worker", "-P", "threads",
            "-c", "2", "-n", "late@test", "--without-mingle", "--without-gossip", "-l", "INFO"]  # fmt: skip
    worker = launch(argv, broker_url=broker_url, env=env, cwd=ROOT, output=log)
    conf = str(tmp_path / "node" / "nodes.conf")
    node = RedisServer(
        tmp_path / "node",
        port,
        appendonly=False,
        extra_args=["--cluster-enabled", "yes", "--cluster-config-file", conf],
    )
    try:
        wait_for(lambda: log.read_text().count("does not answer") >= 2, 60, what="two warnings")
        assert worker.poll() is None, log.read_text()  # still waiting, not ended
        node.start()
        client = redis.Redis(port=port)
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")  # a Cluster of one master
        wait_for(lambda: b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO"), 30)
        wait_for(lambda: "late@test ready." in log.read_text(), 60, what="the worker ready")
        # Its fleet reports go to the state's Cluster (the node that came late).
        wait_for(lambda: client.keys(f"{{{KEYSPACE}:fleet}}:worker:late@test"), 30, what="a fleet report")
        assert "Traceback" not in log.read_text()
        assert worker.stop() == 0  # a warm shutdown
    finally:
        if worker.poll() is None:
            worker.kill()
        node.stop()
