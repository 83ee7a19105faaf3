"""Bad task declarations fail when declared, naming the task, the option and the value."""

from __future__ import annotations

import pytest

from taskpool import ConfigurationError, TaskPool


@pytest.fixture
def app() -> TaskPool:
    return TaskPool("opts", config=False, environ={})


def declare(app: TaskPool, **options: object) -> object:
    def job(x: int) -> int:
        return x

    return app.task(name="opts.job", **options)(job)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"pool": "fibers"}, "pool='fibers' is not a pool"),
        ({"retries": -1}, "retries=-1 must be an integer >= 0"),
        ({"retries": 1.5}, "retries=1.5 must be an integer"),
        ({"retries": True}, "retries=True must be an integer"),
        ({"backoff": -0.1}, "backoff=-0.1 must be a number"),
        ({"backoff": "1s"}, "backoff='1s' must be a number"),
        ({"backoff": float("nan")}, "backoff=nan must be a number"),
        ({"backoff": 10, "backoff_max": 5}, "backoff_max=5 is below backoff=10"),
        ({"backoff_max": 7200}, "backoff_max=7200 must stay below the broker's visibility timeout (3600 s)"),
        ({"backoff": 4000}, "backoff=4000 must stay below the broker's visibility timeout (3600 s)"),
        ({"jitter": "yes"}, "jitter='yes' must be True or False"),
        ({"retry_on": "ValueError"}, "retry_on='ValueError' must be an exception class"),
        ({"retry_on": (ValueError, int)}, "must be an exception class or a tuple"),
        ({"retry_on": ()}, "must be an exception class or a tuple"),
        ({"retires": 3}, "unknown option retires=3"),
        ({"queue": "fast"}, "option queue='fast' is managed by taskpool; use pool= instead"),
        ({"autoretry_for": (ValueError,)}, "use retry_on= instead"),
        ({"max_retries": 3}, "use retries= instead"),
        ({"gpu_slots": 1, "pool": "gevent"}, "gpu_slots=1 needs pool 'prefork' or 'threads', got 'gevent'"),
        ({"gpu_slots": 0.5}, "gpu_slots=0.5 must be an integer >= 1"),
        ({"max_in_flight": 0}, "max_in_flight=0 must be an integer >= 1"),
        ({"cluster_max_in_flight": "2"}, "cluster_max_in_flight='2' must be an integer >= 1"),
        ({"limits": ["license:matlab"]}, "limits=['license:matlab'] must map limit names to slots"),
        ({"limits": {"license:matlab": 0}}, "gives limit 'license:matlab' 0 slots"),
        ({"limits": {"": 1}}, "invalid limit name ''"),
        ({"limits": {"a{b}": 1}}, "limits name 'a{b}' names {b}, which is not a parameter of the task"),
        ({"limits": {"a{x": 1}}, "invalid limit name 'a{x'"),
        ({"limits": {"a{0}": 1}}, "invalid limit name 'a{0}'"),
        ({"rates": {"api": "10/q"}}, "gives 'api' a bad rate"),
        ({"rates": {"api": "0/s"}}, "gives 'api' a bad rate"),
        ({"rates": {"api:{y}": "1/s"}}, "rates name 'api:{y}' names {y}, which is not a parameter"),
        ({"cluster_max_in_flight": {"{x}": 0}}, "cluster_max_in_flight={'{x}': 0} must be an integer >= 1"),
        ({"cluster_max_in_flight": {"plain": 2}}, "or one keyed name -> size"),
    ],
)
def test_bad_declaration_names_task_option_and_value(app: TaskPool, options: dict, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        declare(app, **options)
    message = str(info.value)
    assert message.startswith("task 'opts.job': "), message
    assert fragment in message, message
    assert "opts.job" not in app.tasks  # nothing half-registered


def test_limits_with_rate_limit_are_accepted(app: TaskPool) -> None:
    task = declare(app, max_in_flight=2, rate_limit="1/s")  # Celery's per-worker bucket, then the gate
    assert task.rate_limit == "1/s" and task.taskpool.has_limits


def test_keyed_limits_and_rates_are_recorded(app: TaskPool) -> None:
    task = declare(
        app, limits={"tenant:{x}": 5}, cluster_max_in_flight={"{x}": 3}, rates={"api:{x}": "600/m"}
    )
    opts = task.taskpool
    assert opts.limits == {"tenant:{x}": 5} and opts.rates == {"api:{x}": "600/m"}
    assert (opts.cluster_max_in_flight, opts.cluster_key) == (3, "{x}") and opts.has_limits


def test_limit_declarations_are_recorded(app: TaskPool) -> None:
    task = declare(app, max_in_flight=2, cluster_max_in_flight=3, limits={"gpu:{hostname}": 1}, gpu_slots=1)
    opts = task.taskpool
    assert (opts.max_in_flight, opts.cluster_max_in_flight, opts.gpu_slots) == (2, 3, 1)
    assert opts.limits == {"gpu:{hostname}": 1} and opts.has_limits
    route = app.amqp.router.route({}, task.name, (), {}, task)
    assert route["queue"].name == "taskpool.prefork.gpu"  # only workers with GPU slots consume it


def test_good_declaration_records_options(app: TaskPool) -> None:
    task = declare(
        app, pool="threads", retries=2, backoff=0.5, backoff_max=4, jitter=False, retry_on=KeyError
    )
    opts = task.taskpool
    assert (opts.pool, opts.retries, opts.backoff, opts.backoff_max, opts.jitter) == (
        "threads",
        2,
        0.5,
        4.0,
        False,
    )
    assert opts.retry_on == (KeyError,)
    route = app.amqp.router.route({}, task.name, (), {}, task)
    assert route["queue"].name == "taskpool.threads"
    assert task.max_retries == 2


def test_default_backoff_cap_stays_below_a_short_visibility_timeout() -> None:
    app = TaskPool("opts", config=False, environ={"TASKPOOL_VISIBILITY_TIMEOUT": "60"})
    assert declare(app, retries=3).taskpool.backoff_max == 30.0
    other = TaskPool("opts", config=False, environ={"TASKPOOL_VISIBILITY_TIMEOUT": "60"})
    assert declare(other, retries=3, backoff=45).taskpool.backoff_max == 45.0
    with pytest.raises(ConfigurationError, match="backoff_max=60 must stay below"):
        declare(other, backoff_max=60)


def test_default_pool_comes_from_settings() -> None:
    app = TaskPool("opts", config=False, environ={"TASKPOOL_DEFAULT_POOL": "gevent"})
    assert declare(app).taskpool.pool == "gevent"
    with pytest.raises(
        ConfigurationError, match="default_pool: expected one of prefork, threads, gevent, got 'x'"
    ):
        TaskPool("opts", config=False, environ={"TASKPOOL_DEFAULT_POOL": "x"})


def test_celery_options_pass_through_and_arguments_are_checked(app: TaskPool) -> None:
    task = declare(app, rate_limit="10/s", ignore_result=True)
    assert task.rate_limit == "10/s"
    assert task.ignore_result is True
    with pytest.raises(TypeError):
        task.delay(1, 2)  # Celery checks .delay() arguments against the user's signature


def test_pickle_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="JSON only, never pickle"):
        TaskPool("opts", config=False, environ={"TASKPOOL_ACCEPT_CONTENT": "json,pickle"})


def test_env_overrides_celery_settings_with_celery_types() -> None:
    app = TaskPool(
        "opts",
        config=False,
        environ={
            "TASKPOOL_BROKER_URL": "redis://example:6380/2",
            "TASKPOOL_WORKER_PREFETCH_MULTIPLIER": "4",
            "TASKPOOL_TASK_ACKS_LATE": "false",
            "TASKPOOL_VISIBILITY_TIMEOUT": "600",
        },
    )
    assert app.conf.broker_url == "redis://example:6380/2"
    assert app.conf.result_backend == "redis://example:6380/2"
    assert app.conf.worker_prefetch_multiplier == 4
    assert app.conf.task_acks_late is False
    assert app.conf.broker_transport_options["visibility_timeout"] == 600.0
    with pytest.raises(
        ConfigurationError, match="TASKPOOL_WORKER_PREFETCH_MULTIPLIER='many': expected a int"
    ):
        TaskPool("opts", config=False, environ={"TASKPOOL_WORKER_PREFETCH_MULTIPLIER": "many"})


def test_config_module_is_loaded_and_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    app = TaskPool("opts", environ={})
    assert app.conf.task_acks_late is True  # from config/celery.py
    assert app.conf.broker_url == "redis://127.0.0.1:6379/0"
    app = TaskPool("opts", environ={"TASKPOOL_BROKER_URL": "redis://other:1/0"})
    assert app.conf.broker_url == "redis://other:1/0"
    with pytest.raises(ConfigurationError, match=r"config module .no\.such\.module. could not be imported"):
        TaskPool("opts", config="no.such.module", environ={})
