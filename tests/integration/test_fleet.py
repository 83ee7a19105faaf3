"""The fleet controller over real worker processes (tests/apps/fleet_app.py): a burst grows the
pool's workers to max_workers, idle time shrinks them to min_workers after scaledown_window, and
no task is lost or interrupted by a scale-down (each task records its start and end in Redis).

Everything runs on Redis database 5 of the session's server, with its own queue prefix and
keyspace, so these workers never meet the session workers.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskpool.core.fleet import FleetPolicy
from taskpool.core.names import fleet_worker_key
from taskpool.ops.embedded import free_port
from taskpool.ops.fleet import FleetController, LocalWorkers, running
from taskpool.stores.fleet import FleetStore
from tests.conftest import ROOT, app_on_db, wait_for

POLICY = FleetPolicy("threads", min_workers=1, max_workers=4, buffer_workers=1, scaledown_window=5.0)


fleet_app, fleet_broker = app_on_db("tests.apps.fleet_app", 5)


@pytest.fixture
def local_workers(fleet_app: Any, fleet_broker: str, tmp_path: Path) -> Iterator[LocalWorkers]:
    fleet_app.app.redis.flushdb()  # database 5 is this module's alone
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    workers = LocalWorkers(
        "tests.apps.fleet_app",
        fleet_broker,
        tmp_path,
        concurrency={"threads": 4, "prefork": 2, "gevent": 4},
        env=env,
        cwd=str(ROOT),
    )
    yield workers
    workers.stop_all(30)


def consuming(store: FleetStore) -> list[str]:
    return sorted(
        n for n, r in store.reports().items() if r.get("pool") == "threads" and not r.get("draining")
    )


def test_burst_grows_to_max_then_shrinks_to_min_and_loses_nothing(
    fleet_app: Any, local_workers: LocalWorkers
) -> None:
    app = fleet_app.app
    controller = FleetController(
        app, ["threads"], defaults={"threads": POLICY}, workers=local_workers, slots={"threads": 4}
    )
    store = controller.store
    port = free_port()
    server = controller.serve(port, "127.0.0.1")
    peak = 0
    try:
        with running(controller, 0.25):
            wait_for(lambda: len(consuming(store)) == 1, 60, what="the min_workers worker to report")
            assert len(local_workers.workers) == 1

            results = [fleet_app.work.delay(i, 0.2) for i in range(500)]

            def all_ended() -> bool:
                nonlocal peak
                peak = max(peak, len(consuming(store)))
                return app.redis.llen(fleet_app.ENDED) >= 500

            wait_for(all_ended, 180, interval=0.1, what="500 tasks to end")
            assert sorted(r.get(timeout=30) for r in results) == list(range(500))
            assert peak == POLICY.max_workers

            with urllib.request.urlopen(f"http://127.0.0.1:{port}/keda/threads", timeout=5) as reply:
                doc = json.loads(reply.read())
            assert set(doc) == {"desired", "live", "work", "capacity"}
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                assert 'taskpool_fleet_desired_workers{pool="threads"}' in reply.read().decode()

            def back_to_min() -> bool:
                return len(local_workers.workers) == POLICY.min_workers and len(consuming(store)) == 1

            wait_for(back_to_min, 60, interval=0.2, what="the fleet to shrink back to min_workers")
    finally:
        server.shutdown()
        server.server_close()

    started = [json.loads(x) for x in app.redis.lrange(fleet_app.STARTED, 0, -1)]
    ended = [json.loads(x) for x in app.redis.lrange(fleet_app.ENDED, 0, -1)]
    starts, ends = Counter(x["n"] for x in started), Counter(x["n"] for x in ended)
    assert set(ends) == set(range(500)), "lost tasks"
    assert starts == ends, "a task started and did not end (interrupted), or ran twice"
    assert max(starts.values()) == 1
    nodes = {x["node"] for x in ended}
    assert len(nodes) >= POLICY.max_workers  # the new workers consumed

    # Every drained worker exited by itself, cleanly, and only after the window.
    assert len(local_workers.exited) == POLICY.max_workers - POLICY.min_workers
    assert all(code == 0 for _node, code in local_workers.exited), local_workers.exited
    log = store.decisions(50)
    drains = [e for e in log if str(e.get("action", "")).startswith("draining")]
    assert len(drains) == POLICY.max_workers - POLICY.min_workers
    last_end = max(x["at"] for x in ended)
    # The need dropped below 4 workers at most 2 waves (0.4 s) before the last end; the window is 5 s.
    assert min(e["at"] for e in drains) - last_end >= POLICY.scaledown_window - 1.0
    assert all("holding 0" in e["action"] for e in drains)  # never a busy one while idle ones exist
    assert store.desired()["threads"]["desired"] == 1


def test_scale_fleet_changes_the_policy_in_redis_and_status_shows_it(
    fleet_app: Any, fleet_broker: str
) -> None:
    from tests.conftest import taskpool_cli

    app = fleet_app.app
    app.redis.flushdb()
    env = {"TASKPOOL_BROKER_URL": fleet_broker}
    done = taskpool_cli(
        "tests.apps.fleet_app",
        *("scale", "--fleet", "threads", "--min", "0", "--max", "3", "--buffer", "2"),
        *("--scaledown-window", "7.5"),
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "fleet threads: min_workers=0 max_workers=3 buffer_workers=2 scaledown_window=7.5" in done.stdout
    policy = FleetStore(app.redis, app.settings.keyspace).policy("threads")
    assert policy == FleetPolicy(
        "threads", min_workers=0, max_workers=3, buffer_workers=2, scaledown_window=7.5
    )

    bad = taskpool_cli("tests.apps.fleet_app", "scale", "--fleet", "threads", "--min", "5", env=env)
    assert bad.returncode == 1
    assert "fleet of pool 'threads': min_workers=5 must not exceed max_workers=3" in bad.stderr
    bad = taskpool_cli(
        "tests.apps.fleet_app", "scale", "--fleet", "threads", "--scaledown-window", "nan", env=env
    )
    assert bad.returncode == 1 and "scaledown_window=nan must be a finite number" in bad.stderr
    assert FleetStore(app.redis, app.settings.keyspace).policy("threads") == policy  # nothing half-applied

    # One look of a controller (no workers: decide and export only), then `taskpool status`.
    app.control.purge()
    for i in range(5):
        fleet_app.work.delay(i, 0.01)
    controller = FleetController(app, ["threads"])
    decision = controller.tick()["threads"]
    # 5 queued on 1 slot per worker (no worker reports yet): 5 + buffer 2, bounded by max_workers 3
    assert decision.desired == 3 and "5 queued" in decision.reason
    status = taskpool_cli("tests.apps.fleet_app", "status", env=env)
    assert status.returncode == 0, status.stderr
    assert "fleet (workers per pool)" in status.stdout
    assert "5 queued" in status.stdout and "0-3" in status.stdout
    app.control.purge()


def test_taskpool_up_fleet_runs_the_controller_over_local_workers(
    fleet_app: Any, fleet_broker: str, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys

    app = fleet_app.app
    app.redis.flushdb()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPOOL_")}
    env.update(
        TASKPOOL_BROKER_URL=fleet_broker,
        TASKPOOL_FLEET_THREADS="2,1",  # max_workers 2, min_workers 1
        TASKPOOL_FLEET_SCALEDOWN_WINDOW="1",
        TASKPOOL_FLEET_PORT=str(port),
        PYTHONPATH=str(ROOT),
        COLUMNS="200",
    )
    cmd = [sys.executable, "-m", "taskpool", "up", "--fleet", "-A", "tests.apps.fleet_app"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    store = FleetStore(app.redis, app.settings.keyspace)
    try:
        wait_for(lambda: len(consuming(store)) == 1, 60, what="the first worker of `taskpool up --fleet`")
        # 300 on 8 threads: 2 workers wanted; one alone would take 7.5 s, the second starts in ~1 s
        results = [fleet_app.work.delay(i, 0.2) for i in range(300)]
        assert sorted(r.get(timeout=120) for r in results) == list(range(300))
        ended = [json.loads(x) for x in app.redis.lrange(fleet_app.ENDED, 0, -1)]
        assert len({x["node"] for x in ended}) == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/keda", timeout=5) as reply:
            assert "threads" in json.loads(reply.read())
        wait_for(lambda: len(consuming(store)) == 1, 30, what="the fleet to shrink back to one worker")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert "taskpool up --fleet" in out and "threads: min_workers=1 max_workers=2" in out, out
    assert proc.returncode == 0, out
    [codes] = [line for line in out.splitlines() if line.startswith("exit codes: ")]
    assert "threads-" in codes  # one worker per pool the app declares: prefork, threads, gevent
    assert all(part.rsplit(" ", 1)[1] == "0" for part in codes[len("exit codes: ") :].split(", ")), out


@pytest.mark.parametrize(
    ("pool", "task", "slots"),
    [("threads", "work", 4), ("prefork", "work_prefork", 2), ("gevent", "work_gevent", 4)],
)
def test_drain_of_a_busy_worker_finishes_what_it_holds_and_leaves_the_rest_queued(
    fleet_app: Any, fleet_broker: str, local_workers: LocalWorkers, pool: str, task: str, slots: int
) -> None:
    from taskpool.stores.queues import queue_depth
    from tests.conftest import taskpool_cli

    app = fleet_app.app
    store = FleetStore(app.redis, app.settings.keyspace)
    node = local_workers.start(pool)
    wait_for(lambda: node in store.reports(), 60, what="the worker to report")
    app.control.purge()
    for i in range(60):
        getattr(fleet_app, task).delay(i, 0.3)
    wait_for(lambda: int(store.reports()[node]["busy"]) >= slots, 20, what="the worker to be busy")
    stats = app.control.inspect([node], timeout=2).stats()[node]["taskpool_fleet"]  # Flower's "Other" tab
    assert stats["report"]["node"] == node and stats["report"]["capacity"] == slots
    drained = taskpool_cli(
        "tests.apps.fleet_app", "fleet", "drain", "--node", node, "--wait", "60",
        env={"TASKPOOL_BROKER_URL": fleet_broker},
    )  # fmt: skip
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert "drained" in drained.stdout
    wait_for(lambda: local_workers.reap() or not local_workers.workers, 30, what="the worker to exit")
    assert local_workers.exited == [(node, 0)]

    started = Counter(json.loads(x)["n"] for x in app.redis.lrange(fleet_app.STARTED, 0, -1))
    ended = Counter(json.loads(x)["n"] for x in app.redis.lrange(fleet_app.ENDED, 0, -1))
    assert started == ended, "a task was interrupted by the drain"
    queued = queue_depth(app.redis, app.settings.queue_for(pool))
    assert sum(ended.values()) + queued == 60, "a message was lost"
    assert queued > 0  # the rest waits for another worker
    app.control.purge()


def test_fleet_controller_command_exports_the_desired_count_for_keda(
    fleet_app: Any, fleet_broker: str
) -> None:
    import signal
    import subprocess
    import sys

    app = fleet_app.app
    app.redis.flushdb()
    for i in range(10):
        fleet_app.work.delay(i, 0.01)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPOOL_")}
    env.update(TASKPOOL_BROKER_URL=fleet_broker, TASKPOOL_FLEET_THREADS="3,0", PYTHONPATH=str(ROOT))
    env["TASKPOOL_FLEET_SCALEDOWN_WINDOW"] = "0.5"
    cmd = [sys.executable, "-m", "taskpool", "fleet", "controller", "-A", "tests.apps.fleet_app"]
    cmd += ["--port", str(port), "--address", "127.0.0.1"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip

    def keda() -> Any:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/keda/threads", timeout=2) as reply:
                return json.loads(reply.read())
        except OSError:
            return None

    try:
        # 10 queued, no worker (1 slot per worker until one reports): max_workers 3
        doc = wait_for(lambda: (d := keda()) and d["desired"] == 3 and d, 30, what="the controller's answer")
        assert doc == {"desired": 3, "live": 0, "work": 10, "capacity": 0}
        app.control.purge()
        wait_for(lambda: (d := keda()) and d["desired"] == 0, 30, what="scale to zero after the window")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out


def test_the_signal_counts_work_that_left_the_redis_list(fleet_app: Any, local_workers: LocalWorkers) -> None:
    """Requests held in a worker's admission gate and running are no longer in the Redis list
    (what KEDA's Redis list scaler reads); the fleet's signal still counts every one."""
    app = fleet_app.app
    controller = FleetController(app, ["threads"], defaults={"threads": POLICY})
    node = local_workers.start("threads")
    wait_for(lambda: node in controller.store.reports(), 60, what="the worker to report")
    for i in range(12):
        fleet_app.gated.delay(i, 3.0)

    def measured() -> Any:
        signal, _per_worker = controller.measure(controller.store.reports())["threads"]
        return signal if signal.work == 12 and signal.held >= 1 and signal.running == 1 else None

    signal = wait_for(measured, 20, what="the signal to count the held and running requests")
    assert signal.queued < 12  # the list alone would undercount
    assert signal.capacity == 4 and signal.live == 1
    app.control.purge()


def test_reports_leave_out_bad_json_and_prune_expired_ones(
    redis_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = FleetStore(redis_client, f"records-{os.getpid()}")
    try:
        for node in ("a", "b", "c"):
            store.publish_report(node, {"pool": "threads", "node": node}, ttl=60)
        redis_client.delete(fleet_worker_key(store.keyspace, "b"))  # expired
        redis_client.set(fleet_worker_key(store.keyspace, "c"), b"not json")
        assert store.reports() == {"a": {"pool": "threads", "node": "a"}}
        assert {m.decode() for m in redis_client.smembers(store.keys["workers"])} == {"a", "c"}
        assert "fleet report of c is not JSON" in caplog.text
    finally:
        redis_client.delete(*store.keys.values(), *(fleet_worker_key(store.keyspace, n) for n in "abc"))
