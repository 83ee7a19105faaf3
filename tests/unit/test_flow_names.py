"""Keyed limit and rate names, rate strings, wait reasons: pure parts of flow control."""

from __future__ import annotations

import inspect

import pytest

from taskpool.core import keys
from taskpool.core.errors import ConfigurationError
from taskpool.core.limits import Need, needs_of
from taskpool.core.options import TaskOptions
from taskpool.core.rates import interval_ms, parse_rate, rate_needs_of
from taskpool.worker.waits import WaitTimes, rate_wait, semaphore_wait, summary


def call(tenant_id: str, region: str = "eu", *rest: int) -> None: ...


def options(**kw: object) -> TaskOptions:
    record, _ = TaskOptions.from_decorator("app.call", kw, default_pool="threads", visibility_timeout=3600)
    return record


def test_fields_of_names_the_parameters_hostname_excluded() -> None:
    assert keys.fields_of("tenant:{tenant_id}:{region}:{hostname}") == ["tenant_id", "region"]
    assert keys.fields_of("license:matlab") == []
    for bad in ("a{", "a{0}", "a{}", "a{x!r}", "a{x:>3}"):
        with pytest.raises(ValueError):
            keys.fields_of(bad)


def test_arguments_bind_positional_keyword_and_defaults() -> None:
    sig = inspect.signature(call)
    assert keys.bind(sig, ("acme",), {}) == {"tenant_id": "acme", "region": "eu", "rest": ()}
    assert keys.bind(sig, (), {"tenant_id": "b", "region": "us"})["region"] == "us"
    assert keys.bind(sig, (), {"other": 1}) == {"other": 1}  # does not bind: keyword arguments only


def test_format_name_and_a_missing_parameter_names_task_option_and_parameter() -> None:
    assert keys.format_name("t", "limits", "tenant:{tenant_id}@{hostname}", {"tenant_id": 7}) == (
        "tenant:7@{hostname}"
    )
    with pytest.raises(
        ConfigurationError,
        match=r"task 't': limits name 'tenant:\{tenant_id\}' needs the argument 'tenant_id'",
    ):
        keys.format_name("t", "limits", "tenant:{tenant_id}", {})
    with pytest.raises(ConfigurationError, match="cannot be part of a name"):
        keys.format_name("t", "rates", "api:{tenant_id}", {"tenant_id": "a b"})


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("10/s", 10.0), ("600/m", 10.0), ("1000/h", 1000 / 3600), ("5", 5.0), (5, 5.0), ("2 / m", 2 / 60)],
)
def test_rates_read_celerys_forms(text: object, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["", "0/s", "10/d", "x/s", "-1/s", None, True, "10 per s", "2/minute"])
def test_bad_rates_are_refused(text: object) -> None:
    with pytest.raises(ConfigurationError, match="expected Celery's form"):
        parse_rate(text)


def test_keyed_needs_one_semaphore_per_key_sized_by_declaration_or_stored_size() -> None:
    opts = options(limits={"tenant:{tenant_id}": 5}, cluster_max_in_flight={"{tenant_id}": 2})
    needs = needs_of(opts, node="w", limit_sizes={"tenant:big": 20}, gpus=0, arguments={"tenant_id": "acme"})
    assert needs == [
        Need("task:app.call:acme", 2, 1, "cluster_max_in_flight"),
        Need("limit:tenant:acme", 5, 1, "limit"),
    ]
    big = needs_of(opts, node="w", limit_sizes={"tenant:big": 20}, gpus=0, arguments={"tenant_id": "big"})
    assert big[1] == Need("limit:tenant:big", 20, 1, "limit")
    with pytest.raises(ConfigurationError, match="needs the argument 'tenant_id'"):
        needs_of(opts, node="w", limit_sizes={}, gpus=0, arguments={})


def test_rate_needs_are_formatted_and_spaced() -> None:
    opts = options(rates={"api:openai": "600/m", "user:{tenant_id}": "2/s"})
    needs = rate_needs_of(opts, {"tenant_id": "acme"})
    assert [(n.name, n.interval_ms) for n in needs] == [("api:openai", 100.0), ("user:acme", 500.0)]
    assert interval_ms("1000/h") == pytest.approx(3600.0)


def test_wait_reasons_and_their_summary() -> None:
    limit = semaphore_wait(Need("limit:tenant:acme", 5, 1, "limit"), free=0)
    gpu = semaphore_wait(Need("gpu:host-a", 2, 1, "gpu"), free=0)
    node = semaphore_wait(Need("node:w1@h:task:app.call", 2, 1, "max_in_flight"), free=0)
    rate = rate_wait("api:openai", 0.1)
    assert limit.reason == "limit tenant:acme 5/5"
    assert gpu.reason == "gpu host-a 2/2"
    assert node.reason == "max_in_flight app.call on w1@h 2/2"
    assert rate.reason == "rate api:openai"
    rows = summary([("app.call", limit, 10.0), ("app.call", limit, 12.0), ("app.x", rate, 11.0)], now=13.0)
    assert rows == [
        {"task": "app.call", "reason": "limit tenant:acme 5/5", "kind": "limit", "key": "tenant:acme",
         "count": 2, "oldest_wait": 3.0},
        {"task": "app.x", "reason": "rate api:openai", "kind": "rate", "key": "api:openai", "count": 1,
         "oldest_wait": 2.0},
    ]  # fmt: skip


def test_wait_times_are_a_cumulative_histogram() -> None:
    times = WaitTimes()
    for seconds in (0.001, 0.2, 3.0, 20.0):
        times.observe("rate", seconds)
    snap = times.snapshot()["rate"]
    assert snap["count"] == 4 and snap["sum"] == pytest.approx(23.201)
    assert dict((le, n) for le, n in snap["buckets"])[0.005] == 1
    assert dict((le, n) for le, n in snap["buckets"])[5.0] == 3
    assert dict((le, n) for le, n in snap["buckets"])[10.0] == 3


def test_a_limit_name_matches_the_keyed_name_it_was_formatted_from() -> None:
    assert keys.matches("tenant:{tenant_id}", "tenant:acme")
    assert keys.matches("tenant:{tenant_id}:{region}", "tenant:acme:eu")
    assert not keys.matches("tenant:{tenant_id}", "other:acme")
    assert not keys.matches("tenant:{tenant_id}", "tenant:")
    assert keys.matches("disk:{hostname}:{x}", "disk:h1:7", hostname="h1")
    assert not keys.matches("disk:{hostname}:{x}", "disk:h2:7", hostname="h1")
