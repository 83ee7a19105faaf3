"""The autoscaler's pure parts, in-process: ScalingPolicy on an injected clock, configuration,
modifier registration, and how a callback's answers are judged (on taskpool's real threads pool)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskpool import TaskPool
from taskpool.core.errors import ConfigurationError
from taskpool.worker.autoscale import (
    AutoscaleConfig,
    CallbackAutoscaler,
    PoolStats,
    ScalingPolicy,
    WorkerSetup,
    parse_bounds,
    register_modifier,
    wants_stats,
)
from taskpool.worker.pools.threads import TaskPool as ThreadsPool
from tests.conftest import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def work(active: int = 0, reserved: int = 0, queued: int = 0, current: int = 1) -> PoolStats:
    return PoolStats(pool="threads", current=current, active=active, reserved=reserved, queue_depth=queued)


def test_backlog_grows_at_once_to_demand_plus_buffer_within_bounds() -> None:
    policy = ScalingPolicy(min=1, max=6, buffer=1, cooldown=5, clock=Clock())
    assert policy.decide(1, work()).target == 1
    assert policy.decide(1, work(active=1, reserved=1, queued=1)).target == 4  # 3 + buffer
    decision = policy.decide(4, work(active=4, queued=40))
    assert decision.target == 6  # capped at max
    assert "40 queued" in decision.reason


def test_idle_pool_shrinks_after_cooldown_and_not_before() -> None:
    clock = Clock()
    policy = ScalingPolicy(min=1, max=8, buffer=0, cooldown=10, clock=clock)
    assert policy.decide(1, work(active=5)).target == 5
    clock.now += 1
    assert policy.decide(5, work(active=5)).target == 5  # the last look that saw the work
    # The work ended at some point before the next look (t=1002): 10 s are counted from there.
    for _ in range(11):
        clock.now += 1
        decision = policy.decide(5, work())
        assert decision.target == 5, (clock.now, decision)
    assert clock.now == 1012.0
    clock.now += 0.5
    decision = policy.decide(5, work())
    assert decision.target == 1
    assert "unneeded for 10 s" in decision.reason


def test_shrink_is_gradual_through_the_window() -> None:
    clock = Clock()
    policy = ScalingPolicy(min=1, max=8, buffer=0, cooldown=2, clock=clock)
    for active in (6, 4, 2, 0, 0, 0, 0, 0):
        decision = policy.decide(6, work(active=active))
        clock.now += 1
    assert decision.target == 1
    clock.now = 1000.0
    policy = ScalingPolicy(min=1, max=8, buffer=0, cooldown=2, clock=clock)
    targets = []
    for active in (6, 3, 3, 3, 3, 3):
        targets.append(policy.decide(6, work(active=active)).target)
        clock.now += 1
    assert targets == [6, 6, 6, 6, 3, 3]


def test_steady_fluctuating_load_never_oscillates() -> None:
    clock = Clock()
    policy = ScalingPolicy(min=1, max=10, buffer=1, cooldown=5, clock=clock)
    targets = []
    for i in range(200):
        active = 3 + (i % 3)  # 3, 4, 5, 3, 4, 5, ... : steady on average
        targets.append(policy.decide(6, work(active=active)).target)
        clock.now += 0.5
    assert targets[:3] == [4, 5, 6]  # grows with the first peaks...
    assert set(targets[2:]) == {6}  # ...then holds: no shrink-and-grow cycles


def test_cooldown_zero_follows_demand() -> None:
    clock = Clock()
    policy = ScalingPolicy(min=2, max=5, buffer=0, cooldown=0, clock=clock)
    assert policy.decide(2, work(active=4)).target == 4
    clock.now += 1
    policy.decide(4, work(active=4))
    clock.now += 1
    policy.decide(4, work())  # the previous need still counts as of this look
    clock.now += 0.1
    assert policy.decide(4, work()).target == 2


def test_cpu_target_sizes_prefork_by_utilisation_but_not_beyond_demand() -> None:
    clock = Clock()
    policy = ScalingPolicy(min=1, max=16, buffer=1, cooldown=0, target_cpu=0.5, clock=clock)
    busy = PoolStats(pool="prefork", current=4, active=4, queue_depth=20, cpu_utilisation=1.0)
    assert policy.decide(4, busy).target == 8  # 4 processes at 100 % -> 8 at 50 %
    waiting = PoolStats(pool="prefork", current=4, active=4, queue_depth=20, cpu_utilisation=0.25)
    clock.now += 1
    policy.decide(4, waiting)
    clock.now += 1
    assert policy.decide(4, waiting).target == 2  # I/O-bound children: fewer would do
    small = PoolStats(pool="prefork", current=4, active=1, cpu_utilisation=1.0)
    clock.now += 1
    policy.decide(4, small)
    clock.now += 1
    assert policy.decide(4, small).target == 2  # demand 1 + buffer 1


def test_policy_update_validates() -> None:
    policy = ScalingPolicy(min=1, max=4)
    policy.update(max=8, buffer=0, cooldown=0.5)
    assert (policy.min, policy.max, policy.buffer, policy.cooldown) == (1, 8, 0, 0.5)
    for bad in ({"min": 0}, {"min": 9}, {"buffer": -1}, {"cooldown": -1.0}):
        with pytest.raises(ValueError):
            policy.update(**bad)
    assert (policy.min, policy.max) == (1, 8)


# -- configuration -------------------------------------------------------------------------------
def test_config_from_env_per_pool_over_global_over_config_module() -> None:
    env = {
        "TASKPOOL_AUTOSCALE_GEVENT": "100,10",
        "TASKPOOL_AUTOSCALE_COOLDOWN": "12.5",
        "TASKPOOL_AUTOSCALE_GEVENT_BUFFER": "4",
        "TASKPOOL_AUTOSCALE_BUFFER": "2",
        "TASKPOOL_CONCURRENCY_MODIFIER_GEVENT": "pkg.mod:adjust",
    }
    conf = {"autoscale_gevent": "50,5", "autoscale_callback_timeout": 3, "autoscale_threads": (8, 2)}
    gevent = AutoscaleConfig.from_env("gevent", env, conf)
    assert (gevent.max, gevent.min, gevent.buffer, gevent.cooldown) == (100, 10, 4, 12.5)
    assert gevent.callback_timeout == 3.0 and gevent.modifier == "pkg.mod:adjust"
    threads = AutoscaleConfig.from_env("threads", env, conf)
    assert (threads.max, threads.min, threads.buffer) == (8, 2, 2)
    assert AutoscaleConfig.from_env("prefork", {}, {}).max is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TASKPOOL_AUTOSCALE_THREADS": "ten"}, "TASKPOOL_AUTOSCALE_THREADS='ten': expected 'max,min'"),
        ({"TASKPOOL_AUTOSCALE_THREADS": "2,5"}, "min=5 must not exceed max=2"),
        ({"TASKPOOL_AUTOSCALE_COOLDOWN": "soon"}, "TASKPOOL_AUTOSCALE_COOLDOWN='soon': expected a float"),
        ({"TASKPOOL_AUTOSCALE_TARGET_CPU": "0.7"}, "target_cpu is for prefork pools"),
        ({"TASKPOOL_AUTOSCALE_THREADS_BUFFER": "-1"}, "buffer=-1 must be >= 0"),
    ],
)
def test_bad_autoscale_settings_are_refused_with_the_value(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        AutoscaleConfig.from_env("threads", env, {})


def test_autoscale_settings_are_read_in_core_settings() -> None:
    from taskpool.core.settings import autoscale_settings

    env = {"TASKPOOL_AUTOSCALE_PREFORK": "6", "TASKPOOL_AUTOSCALE_PREFORK_TARGET_CPU": "0.6"}
    assert autoscale_settings("prefork", env, {"autoscale_cooldown": "4"}) == {
        "max": 6,
        "min": None,
        "cooldown": 4.0,
        "target_cpu": 0.6,
    }
    assert autoscale_settings("threads", {}, {}) == {}


def test_policy_module_is_pure() -> None:
    """taskpool.core.policy imports neither Celery nor Redis: only the stdlib and taskpool.core."""
    import ast
    import sys
    from pathlib import Path

    import taskpool.core.policy

    tree = ast.parse(Path(taskpool.core.policy.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in sys.stdlib_module_names or name.startswith("taskpool.core."), name


def test_target_cpu_range() -> None:
    assert AutoscaleConfig("prefork", target_cpu=0.7).target_cpu == 0.7
    with pytest.raises(ConfigurationError, match=r"target_cpu=0.99 must be within 0.05-0.95"):
        AutoscaleConfig("prefork", target_cpu=0.99)


def test_parse_bounds_forms() -> None:
    assert parse_bounds("10,3") == (10, 3)
    assert parse_bounds("10") == (10, None)
    assert parse_bounds([6, 2]) == (6, 2)
    with pytest.raises(ConfigurationError):
        parse_bounds("1,2,3")


def test_concurrency_modifier_registration() -> None:
    app = TaskPool("modifiers", config=False)

    @app.concurrency_modifier(pool="threads")
    def adjust(current: int) -> int:
        return current

    @app.concurrency_modifier(pool="gevent")
    def with_stats(current: int, stats: PoolStats) -> int:
        return current

    assert app.concurrency_modifiers == {"threads": adjust, "gevent": with_stats}
    assert not wants_stats(adjust) and wants_stats(with_stats) and wants_stats(lambda *a: 1)
    with pytest.raises(ConfigurationError, match="a pool has one modifier"):
        app.concurrency_modifier(with_stats, pool="threads")
    with pytest.raises(ConfigurationError, match="pool='fibers' must be one of"):
        app.concurrency_modifier(pool="fibers")
    with pytest.raises(ConfigurationError, match="is not callable"):
        register_modifier({}, 3, pool="threads")  # type: ignore[arg-type]


# -- judging a callback, on the real threads pool ---------------------------------------------------
@pytest.fixture
def threads_pool() -> Iterator[ThreadsPool]:
    pool = ThreadsPool(2)
    pool.start()
    yield pool
    pool.stop()


def scaler_for(pool: ThreadsPool, modifier: Any, timeout: float = 0.3) -> CallbackAutoscaler:
    config = AutoscaleConfig("threads", max=6, min=1, callback_timeout=timeout)
    return CallbackAutoscaler(pool, 6, 1, setup=WorkerSetup(None, config, modifier))


def tick_until(scaler: CallbackAutoscaler, predicate: Any, timeout: float = 5.0) -> None:
    def step() -> bool:
        scaler.maybe_scale()
        return bool(predicate())

    wait_for(step, timeout=timeout, interval=0.05)


@pytest.mark.parametrize(
    ("answer", "fault", "target"),
    [
        (RuntimeError("boom"), "exception", 3),
        (None, "none", 3),
        ("three", "not_int", 3),
        (2.5, "not_int", 3),
        (True, "not_int", 3),
        (-4, "negative", 1),
        (10**12, "above_max", 6),
        (0, "below_min", 1),
    ],
)
def test_bad_answers_are_counted_and_clamped_or_ignored(
    threads_pool: ThreadsPool, answer: Any, fault: str, target: int
) -> None:
    answers = iter([3])

    def modifier(current: int) -> Any:
        value = next(answers, answer)
        if isinstance(value, BaseException):
            raise value
        return value

    scaler = scaler_for(threads_pool, modifier)
    tick_until(scaler, lambda: scaler.target == 3)
    assert threads_pool.limit == 3  # grown at once
    tick_until(scaler, lambda: scaler.faults.get(fault, 0) >= 2)
    assert scaler.target == target and threads_pool.limit == target
    assert set(scaler.faults) == {fault}
    info = scaler.info()
    assert info["faults"] == scaler.faults and info["mode"] == "callback"


def test_hanging_callback_keeps_the_previous_value_and_resumes(threads_pool: ThreadsPool) -> None:
    release = threading.Event()
    calls = []

    def modifier(current: int) -> int:
        calls.append(current)
        if len(calls) == 2:
            release.wait(10)
            return 5
        return 4 if len(calls) == 1 else 2

    scaler = scaler_for(threads_pool, modifier, timeout=0.3)
    tick_until(scaler, lambda: scaler.target == 4)
    started = time.monotonic()
    tick_until(scaler, lambda: scaler.faults.get("hang") == 1)
    assert time.monotonic() - started < 2.0  # each tick came back at once
    for _ in range(5):
        scaler.maybe_scale()
    assert scaler.faults == {"hang": 1} and len(calls) == 2  # no pile-up of stuck calls
    assert scaler.target == 4
    release.set()
    tick_until(scaler, lambda: scaler.target == 2)  # the late answer (5) applied, then new calls
    assert calls[2:] and 5 in [d["to"] for d in scaler.decisions]


def test_threads_pool_shrinks_only_idle_threads(threads_pool: ThreadsPool) -> None:
    gate = threading.Event()
    started = threading.Semaphore(0)

    def job() -> None:
        started.release()
        gate.wait(10)

    threads_pool.grow(2)
    assert threads_pool.limit == 4
    for _ in range(3):
        threads_pool.apply_async(job)
    for _ in range(3):
        assert started.acquire(timeout=5)
    wait_for(lambda: threads_pool.idle == 1, timeout=5)  # the 4th thread, just started, waits for work
    assert threads_pool.shrink(3) == 1  # only the one idle thread goes
    with pytest.raises(ValueError, match="All threads busy"):
        threads_pool.shrink(1)
    assert threads_pool.limit == 3
    gate.set()
    wait_for(lambda: threads_pool.idle == 3, timeout=5)
    assert threads_pool.shrink(5) == 2  # never below one thread
    assert threads_pool.info["max-concurrency"] == 1
    wait_for(lambda: threads_pool.info["threads"] == 1, timeout=5)
