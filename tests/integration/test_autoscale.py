"""The autoscaler through real `celery worker` processes (tests/apps/autoscale_app.py).

Everything runs on Redis database 1 of the session's server, with its own queue prefix, so these
workers never meet the session workers (queues, tasks or broadcasts). What the autoscaler did is
read from `inspect stats` (its `autoscaler` entry) and from the tasks' own records.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Worker, app_on_db, wait_for, worker_set

Start = Callable[..., Worker]


as_app, as_broker = app_on_db("tests.apps.autoscale_app", 1)


@pytest.fixture
def start(as_app: Any, as_broker: str, tmp_path: Path) -> Iterator[Start]:
    """Starts autoscale-test workers; stops them (and purges their queues) after the test."""
    as_app.app.control.purge()
    with worker_set(as_app, as_broker, tmp_path) as workers:

        def run(pool: str, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> Worker:
            return workers.start(pool, f"as-{pool}-{os.urandom(3).hex()}", args=args, **(env or {}))

        yield run
    as_app.app.control.purge()


def autoscaler(app: Any, worker: Worker) -> dict[str, Any]:
    replies = app.control.inspect(destination=[worker.hostname], timeout=1.0).stats() or {}
    assert worker.hostname in replies, f"{worker.hostname} did not answer; log:\n{worker.log()[-3000:]}"
    return dict(replies[worker.hostname]["autoscaler"])


def until(
    app: Any, worker: Worker, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
) -> Any:
    last: dict[str, Any] = {}

    def check() -> bool:
        last.clear()
        last.update(autoscaler(app, worker))
        return predicate(last)

    try:
        wait_for(check, timeout=timeout, interval=0.1, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; autoscaler: {last}") from None
    return last


def alive_and_working(as_app: Any, worker: Worker) -> None:
    assert worker.process is not None and worker.process.poll() is None, worker.log()[-3000:]
    start, end = as_app.NAP[worker.pool].delay(0.01).get(timeout=10)
    assert end >= start


# -- the user's callback -----------------------------------------------------------------------
@pytest.mark.parametrize("pool", ["prefork", "threads", "gevent"])
def test_runpod_example_callback_moves_concurrency_one_step_a_second(
    as_app: Any, start: Start, pool: str
) -> None:
    r = as_app.app.redis
    key = f"{as_app.KEYSPACE}:request_rate"
    r.set(key, 0)
    worker = start(pool, env={"AUTOSCALE_TEST_MODIFIER": "runpod"}, args=("--autoscale=10,1",))
    info = autoscaler(as_app.app, worker)
    assert info["mode"] == "callback" and info["callback"] == "tests.apps.autoscale_app.adjust_concurrency"
    assert (info["min"], info["max"], info["current"]) == (1, 10, 1)

    r.set(key, 100)  # above RunPod's threshold of 50: +1 each call
    began = time.monotonic()
    info = until(as_app.app, worker, lambda i: i["current"] >= 4, 8, "concurrency to climb to 4")
    assert time.monotonic() - began < 5.5  # 3 steps, one call a second (plus replies' latency)
    ups = [d for d in info["decisions"] if d["to"] > d["from"]]
    assert [(d["from"], d["to"]) for d in ups[:3]] == [(1, 2), (2, 3), (3, 4)]
    assert all("callback returned" in d["reason"] for d in ups)
    alive_and_working(as_app, worker)

    r.set(key, 0)  # below: -1 each call, applied without draining
    info = until(as_app.app, worker, lambda i: i["current"] == 1, 10, "concurrency back to 1")
    downs = [d for d in info["decisions"] if d["to"] < d["from"]]
    assert all(d["from"] - d["to"] == 1 for d in downs) and downs[-1]["to"] == 1
    assert info["faults"] == {}
    alive_and_working(as_app, worker)


BAD_CASES = [
    # mode, fault counted, target after it (3 before each case; bounds [1, 4])
    ("raise", "exception", 3),
    ("none", "none", 3),
    ("text", "not_int", 3),
    ("negative", "negative", 1),
    ("huge", "above_max", 4),
    ("hang", "hang", 3),
]


@pytest.mark.parametrize("pool", ["prefork", "threads", "gevent"])
def test_each_bad_callback_leaves_the_worker_alive_and_working(as_app: Any, start: Start, pool: str) -> None:
    r = as_app.app.redis
    mode = f"{as_app.KEYSPACE}:mode"
    r.set(mode, "ok:3")
    worker = start(
        pool,
        env={"AUTOSCALE_TEST_MODIFIER": "scripted", "TASKPOOL_AUTOSCALE_CALLBACK_TIMEOUT": "0.5"},
        args=("--autoscale=4,1",),
    )
    app = as_app.app
    until(app, worker, lambda i: i["target"] == 3 and i["current"] == 3, 5, "the callback's 3")
    for case, fault, target in BAD_CASES:
        r.set(mode, case)
        info = until(app, worker, lambda i, f=fault: i["faults"].get(f, 0) >= 1, 6, f"fault {fault}")
        assert info["target"] == target, (case, info)
        alive_and_working(as_app, worker)  # tasks still run while the callback misbehaves
        r.set(mode, "ok:3")  # (the hanging call returns 3 once it sees this)
        until(app, worker, lambda i: i["target"] == 3 and i["current"] == 3, 6, f"recovery after {case}")

    r.set(mode, "ok:2")
    info = until(app, worker, lambda i: i["current"] == 2, 6, "calls to resume after the hang")
    assert {k: info["faults"].get(k, 0) >= 1 for _, k, _ in BAD_CASES} == {k: True for _, k, _ in BAD_CASES}
    log = worker.log()
    for _, fault, _ in BAD_CASES:  # each kind logged once, however often it happened
        assert log.count(f"fault {fault!r}") == 1, (fault, log[-3000:])
    assert "Traceback" in log and "the modifier fails on purpose" in log  # the exception, once
    alive_and_working(as_app, worker)


# -- the built-in policy -----------------------------------------------------------------------
COOLDOWN = 3.0


@pytest.mark.parametrize("pool", ["prefork", "threads", "gevent"])
def test_backlog_grows_the_pool_within_2s_and_idle_shrinks_after_cooldown(
    as_app: Any, start: Start, pool: str
) -> None:
    env = {f"TASKPOOL_AUTOSCALE_{pool.upper()}": "4,1", "TASKPOOL_AUTOSCALE_COOLDOWN": str(COOLDOWN)}
    worker = start(pool, env=env)
    app = as_app.app
    info = until(app, worker, lambda i: i["ticks"] >= 1, 5, "the first tick")
    assert (info["mode"], info["min"], info["max"], info["current"]) == ("policy", 1, 4, 1)

    submitted = time.monotonic()
    results = [as_app.NAP[pool].delay(1.0) for _ in range(8)]
    info = until(app, worker, lambda i: i["current"] == 4, 2.0, "the backlog to grow the pool to 4")
    grown_after = time.monotonic() - submitted
    assert "demand" in info["last_decision"]["reason"]

    intervals = [res.get(timeout=20) for res in results]
    finished = max(end for _, end in intervals)
    most = max(sum(1 for s, e in intervals if s <= t < e) for t, _ in intervals)
    assert most == 4, intervals  # from the tasks' records: four really ran at once

    info = until(app, worker, lambda i: i["current"] == 1, COOLDOWN + 4, "the idle pool to shrink to 1")
    shrinks = [d for d in info["decisions"] if d["to"] < d["from"]]
    assert shrinks and shrinks[-1]["to"] == 1
    first_shrink = min(d["at"] for d in shrinks)
    # Not before: no slot went back until COOLDOWN seconds after demand fell below 4, i.e. after
    # the fifth task ended (the queue was empty and three ran). The tasks' own end times are
    # recorded inside the task, a little before the worker hears of them.
    fifth_end = sorted(end for _, end in intervals)[4]
    assert first_shrink >= fifth_end + COOLDOWN - 0.05, (first_shrink - fifth_end, shrinks)
    assert first_shrink <= finished + COOLDOWN + 5.0, (first_shrink - finished, shrinks)
    assert info["faults"] == {}
    print(
        f"{pool}: grown to 4 in {grown_after:.2f} s; first shrink {first_shrink - finished:.2f} s after idle"
    )


# -- runtime changes -----------------------------------------------------------------------------
def test_celery_control_autoscale_and_taskpool_scale_take_effect(
    as_app: Any, start: Start, as_broker: str
) -> None:
    worker = start("threads", env={"TASKPOOL_AUTOSCALE_THREADS": "4,1", "TASKPOOL_AUTOSCALE_COOLDOWN": "30"})
    app = as_app.app

    replies = app.control.autoscale(6, 3, destination=[worker.hostname], reply=True, timeout=2)
    assert replies == [{worker.hostname: {"ok": "autoscale now max=6 min=3"}}]
    info = until(app, worker, lambda i: i["current"] == 3, 2, "the pool to grow to the new min")
    assert (info["min"], info["max"]) == (3, 6)
    stats = app.control.inspect(destination=[worker.hostname], timeout=1).stats()[worker.hostname]
    assert stats["pool"]["max-concurrency"] == 3  # Celery's own figure stays true

    refused = app.control.pool_grow(1, destination=[worker.hostname], reply=True, timeout=2)
    assert "not supported with autoscale" in refused[0][worker.hostname]["error"]

    env = dict(os.environ, TASKPOOL_BROKER_URL=as_broker, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "taskpool", "scale", "-A", "tests.apps.autoscale_app", "--pool", "threads"]
    done = subprocess.run(
        [*argv, "--min", "1", "--max", "2", "--buffer", "0", "--cooldown", "0.5"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"{worker.hostname}: threads: min=1 max=2 buffer=0 cooldown=0.5" in done.stdout
    info = until(app, worker, lambda i: i["current"] == 1, 4, "the idle pool to shrink within the new bounds")
    assert (info["min"], info["max"], info["buffer"], info["cooldown"]) == (1, 2, 0, 0.5)

    bad = subprocess.run(
        [*argv, "--min", "3", "--max", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1 and "max=2 must be >= min=3" in bad.stdout, (bad.stdout, bad.stderr)
    assert autoscaler(app, worker)["max"] == 2
    alive_and_working(as_app, worker)
