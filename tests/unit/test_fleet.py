"""The fleet policy (taskpool.core.fleet): desired workers from the signal, the scale-down window,
and which worker goes."""

from __future__ import annotations

import pytest

from taskpool.core.errors import ConfigurationError
from taskpool.core.fleet import FleetPolicy, FleetScaler, FleetSignal, WorkerLoad, pick_to_drain


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


POLICY = FleetPolicy("threads", min_workers=1, max_workers=4, buffer_workers=1, scaledown_window=5.0)


def signal(queued: int = 0, running: int = 0, live: int = 1, **kw: int) -> FleetSignal:
    return FleetSignal("threads", queued=queued, running=running, live=live, capacity=4 * live, **kw)


def test_burst_grows_to_max_at_once() -> None:
    scaler = FleetScaler(clock=Clock())
    decision = scaler.decide(POLICY, signal(queued=496, running=4), slots_per_worker=4)
    assert decision.desired == 4
    assert "496 queued" in decision.reason and "buffer 1" in decision.reason


def test_every_part_of_the_signal_counts() -> None:
    scaler = FleetScaler(clock=Clock())
    policy = FleetPolicy("threads", min_workers=0, max_workers=10, buffer_workers=0, scaledown_window=0)
    # 2 queued + 3 reserved + 2 held + 1 running = 8 work on 4 slots per worker: 2 workers
    got = scaler.decide(policy, signal(queued=2, running=1, reserved=3, held=2), slots_per_worker=4)
    assert got.desired == 2
    # KEDA's Redis list scaler would see 2 (the list): 1 worker
    assert scaler.decide(policy, signal(queued=0, running=1, reserved=0), slots_per_worker=4).desired == 1


def test_buffer_only_while_there_is_work() -> None:
    scaler = FleetScaler(clock=Clock())
    policy = FleetPolicy("threads", min_workers=0, max_workers=5, buffer_workers=2, scaledown_window=0)
    assert scaler.decide(policy, signal(queued=1), slots_per_worker=4).desired == 3
    assert scaler.decide(policy, signal(), slots_per_worker=4).desired == 0


def test_scale_down_waits_for_the_window() -> None:
    clock = Clock()
    scaler = FleetScaler(clock=clock)
    assert scaler.decide(POLICY, signal(queued=100, live=4), 4).desired == 4
    clock.now += 1
    idle = signal(live=4)
    assert scaler.decide(POLICY, idle, 4).desired == 4  # the previous look's need lasts until now
    clock.now += 3
    decision = scaler.decide(POLICY, idle, 4)
    assert decision.desired == 4 and "keeping 4" in decision.reason
    clock.now += 2.5  # 5.5 s since the need was last seen (at +1)
    decision = scaler.decide(POLICY, idle, 4)
    assert decision.desired == 1
    assert "unneeded for 5 s" in decision.reason


def test_new_work_inside_the_window_keeps_the_fleet() -> None:
    clock = Clock()
    scaler = FleetScaler(clock=clock)
    scaler.decide(POLICY, signal(queued=100, live=4), 4)
    for _ in range(10):
        clock.now += 2
        scaler.decide(POLICY, signal(queued=100, live=4), 4)
        clock.now += 2
        assert scaler.decide(POLICY, signal(live=4), 4).desired == 4


def test_min_and_max_bound_the_desired_count() -> None:
    scaler = FleetScaler(clock=Clock())
    policy = FleetPolicy("gevent", min_workers=2, max_workers=3, buffer_workers=0, scaledown_window=0)
    assert scaler.decide(policy, FleetSignal("gevent"), 100).desired == 2
    assert scaler.decide(policy, FleetSignal("gevent", queued=10_000), 100).desired == 3


def test_scale_to_zero() -> None:
    clock = Clock()
    scaler = FleetScaler(clock=clock)
    policy = FleetPolicy("prefork", min_workers=0, max_workers=2, buffer_workers=0, scaledown_window=1)
    assert scaler.decide(policy, FleetSignal("prefork", queued=1), 2).desired == 1
    clock.now += 1
    scaler.decide(policy, FleetSignal("prefork", live=1), 2)
    clock.now += 2
    assert scaler.decide(policy, FleetSignal("prefork", live=1), 2).desired == 0


def test_a_slot_count_below_one_counts_as_one() -> None:
    policy = FleetPolicy("threads", min_workers=0, max_workers=10, scaledown_window=0)
    assert FleetScaler(clock=Clock()).decide(policy, signal(queued=3), 0).desired == 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"min_workers": -1}, "min_workers=-1 must be >= 0"),
        ({"max_workers": 0, "min_workers": 0}, "max_workers=0 must be >= 1"),
        ({"min_workers": 5, "max_workers": 4}, "min_workers=5 must not exceed max_workers=4"),
        ({"buffer_workers": -2}, "buffer_workers=-2 must be >= 0"),
        ({"scaledown_window": -1.0}, "scaledown_window=-1.0 must be a finite number"),
        ({"scaledown_window": float("inf")}, "scaledown_window=inf must be a finite number"),
        ({"max_workers": "4"}, "max_workers='4' must be an integer"),
    ],
)
def test_bad_values_name_the_pool_option_and_value(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        FleetPolicy("gevent", **{"min_workers": 1, "max_workers": 4, **changes})  # type: ignore[arg-type]
    assert "fleet of pool 'gevent'" in str(info.value)
    assert message in str(info.value)


def test_unknown_option_is_named() -> None:
    with pytest.raises(ConfigurationError, match="unknown option 'max_containers'"):
        FleetPolicy.from_dict("threads", {"max_containers": 3})
    with pytest.raises(ConfigurationError, match="unknown option 'spare'"):
        POLICY.updated(spare=1)


def test_updated_keeps_what_is_not_given_and_validates() -> None:
    policy = POLICY.updated(max_workers=8, buffer_workers=None)
    assert (policy.min_workers, policy.max_workers, policy.buffer_workers) == (1, 8, 1)
    assert POLICY.updated(min_workers=0).min_workers == 0
    with pytest.raises(ConfigurationError, match="min_workers=9 must not exceed max_workers=4"):
        POLICY.updated(min_workers=9)
    assert FleetPolicy.from_dict("threads", policy.as_dict()) == policy


def test_never_picks_a_busy_worker_while_an_idle_one_exists() -> None:
    workers = [
        WorkerLoad("a", busy=3),
        WorkerLoad("b", busy=0, idle_since=50.0),
        WorkerLoad("c", busy=1),
        WorkerLoad("d", busy=0, idle_since=10.0),
    ]
    assert pick_to_drain(workers, 1) == ["d"]  # the longest idle
    assert pick_to_drain(workers, 2) == ["d", "b"]
    assert pick_to_drain(workers, 3) == ["d", "b", "c"]  # then the least busy
    assert pick_to_drain(workers, 0) == []


def test_fleet_settings_from_the_environment() -> None:
    from taskpool.core.settings import fleet_port, fleet_settings

    env = {
        "TASKPOOL_FLEET_THREADS": "8,0",
        "TASKPOOL_FLEET_BUFFER": "2",
        "TASKPOOL_FLEET_THREADS_SCALEDOWN_WINDOW": "30",
        "TASKPOOL_FLEET_SCALEDOWN_WINDOW": "90",
    }
    assert fleet_settings("threads", env) == {
        "max_workers": 8,
        "min_workers": 0,
        "buffer_workers": 2,
        "scaledown_window": 30.0,
    }
    assert fleet_settings("gevent", env) == {"buffer_workers": 2, "scaledown_window": 90.0}
    with pytest.raises(ConfigurationError, match="TASKPOOL_FLEET_BUFFER='x'"):
        fleet_settings("gevent", {"TASKPOOL_FLEET_BUFFER": "x"})
    with pytest.raises(ConfigurationError, match="TASKPOOL_FLEET_PREFORK='a,b'"):
        fleet_settings("prefork", {"TASKPOOL_FLEET_PREFORK": "a,b"})
    assert fleet_port({}) == 9809 and fleet_port({"TASKPOOL_FLEET_PORT": "0"}) == 0
    with pytest.raises(ConfigurationError, match="TASKPOOL_FLEET_PORT='99999'"):
        fleet_port({"TASKPOOL_FLEET_PORT": "99999"})


def test_local_default_policy_under_the_environment() -> None:
    from taskpool.ops.cli.fleet import default_policy

    assert default_policy("gevent", {}) == FleetPolicy("gevent", 1, 4, 0, 60.0)
    assert default_policy("gevent", {"TASKPOOL_FLEET_GEVENT": "10,2"}).max_workers == 10
    with pytest.raises(ConfigurationError, match="fleet of pool 'gevent': min_workers=5 must not exceed"):
        default_policy("gevent", {"TASKPOOL_FLEET_GEVENT": "3,5"})
