"""TASKPOOL_STATE_URL: taskpool's state on a Redis of its own (a Redis Cluster among others), the
broker's Redis by default; parsed, refused with the setting named, passwords masked."""

from __future__ import annotations

import pytest
from redis.sentinel import SentinelConnectionPool

from taskpool import ConfigurationError, TaskPool
from taskpool.core.cluster import parse_cluster_url
from taskpool.core.settings import Settings, mask_url

BROKER = "redis://127.0.0.1:6390/0"


def test_the_state_is_the_brokers_redis_by_default() -> None:
    settings = Settings(broker_url=BROKER)
    assert settings.state_url is None
    assert settings.redis_url == BROKER
    assert not settings.state_is_apart
    app = TaskPool("d", config=False, environ={"TASKPOOL_BROKER_URL": BROKER})
    assert app.redis is app.broker_redis  # one client, as before the setting existed


def test_a_state_url_gives_the_state_client_and_leaves_the_broker_alone() -> None:
    env = {"TASKPOOL_BROKER_URL": BROKER, "TASKPOOL_STATE_URL": "redis://127.0.0.1:6391/2"}
    app = TaskPool("s", config=False, environ=env)
    assert app.settings.state_url == "redis://127.0.0.1:6391/2"
    assert app.conf.broker_url == BROKER  # Celery's broker and results are untouched
    assert app.conf.result_backend == BROKER
    state = app.redis.connection_pool.connection_kwargs
    broker = app.broker_redis.connection_pool.connection_kwargs
    assert (state["port"], state["db"]) == (6391, 2)
    assert (broker["port"], broker["db"]) == (6390, 0)
    assert app.redis is app.redis  # one per process


def test_a_sentinel_state_url_asks_its_sentinels_for_the_master_name() -> None:
    env = {
        "TASKPOOL_BROKER_URL": BROKER,
        "TASKPOOL_STATE_URL": "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379/1",
        "TASKPOOL_SENTINEL_MASTER": "state",
    }
    app = TaskPool("s", config=False, environ=env)
    pool = app.redis.connection_pool  # built without connecting
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "state"
    assert "master_name" not in app.conf.broker_transport_options  # the broker is a plain Redis


def test_a_cluster_url_names_seed_nodes_tls_and_auth() -> None:
    parsed = parse_cluster_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7001,node3")
    assert parsed.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("node3", 6379))
    assert not parsed.ssl and parsed.password is None and parsed.username is None
    parsed = parse_cluster_url("rediss+cluster://app:s%40cret@[::1]:7000/0")
    assert parsed.nodes == (("::1", 7000),)
    assert parsed.ssl
    assert (parsed.username, parsed.password) == ("app", "s@cret")
    assert "s@cret" not in repr(parsed)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://h:1", "expected a Redis URL"),
        ("redis+cluster://", "names no node"),
        ("redis+cluster://h:1,h:x", "port 'x'"),
        ("redis+cluster://h:1/3", "database 0 only"),
        ("redis+cluster://h:1?ssl_cert_reqs=none", "no query options"),
        ("redis+cluster://:pw@h:1,:2", "has no host"),
        ("sentinel://h:1/x", "database 'x' is not a number"),
    ],
)
def test_a_bad_state_url_is_refused_naming_the_setting_and_the_value(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(broker_url=BROKER, state_url=url)
    message = str(info.value)
    assert "state_url" in message and "TASKPOOL_STATE_URL" in message
    assert fragment in message
    assert "pw@" not in message  # the password masked
    with pytest.raises(ConfigurationError, match="TASKPOOL_STATE_URL"):
        TaskPool("bad", config=False, environ={"TASKPOOL_BROKER_URL": BROKER, "TASKPOOL_STATE_URL": url})


def test_the_broker_cannot_be_a_cluster_and_is_told_where_the_cluster_goes() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(broker_url="redis+cluster://:pw@h:7000,h:7001")
    assert "broker_url" in str(info.value) and "TASKPOOL_STATE_URL" in str(info.value)
    assert "pw" not in str(info.value)


def test_the_password_setting_reaches_the_state_url_and_every_url_is_masked() -> None:
    settings = Settings.from_env(
        {
            "TASKPOOL_BROKER_URL": "redis://h:1/0",
            "TASKPOOL_STATE_URL": "redis+cluster://h:7000,h:7001",
            "TASKPOOL_REDIS_PASSWORD": "s3cret",
        }
    )
    assert settings.state_url == "redis+cluster://:s3cret@h:7000,h:7001"
    assert parse_cluster_url(settings.state_url).password == "s3cret"
    assert mask_url(settings.state_url) == "redis+cluster://:**@h:7000,h:7001"
    assert "s3cret" not in repr(settings)
    own = Settings.from_env(
        {"TASKPOOL_STATE_URL": "redis+cluster://u:mine@h:7000", "TASKPOOL_REDIS_PASSWORD": "s3cret"}
    )
    assert own.state_url == "redis+cluster://u:mine@h:7000"  # a URL's own password wins
