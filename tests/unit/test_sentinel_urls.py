"""sentinel:// URLs (kombu's form): parsed for taskpool's own clients, given to Celery with master_name."""

from __future__ import annotations

import pytest
from redis.sentinel import SentinelConnectionPool

from taskpool import ConfigurationError, TaskPool
from taskpool.core.sentinel import parse_sentinel_url
from taskpool.core.settings import Settings, mask_url
from taskpool.stores.redis_client import redis_client

URL = "sentinel://127.0.0.1:26379;sentinel://10.0.0.2:26380;sentinel://[::1]/3"


def test_each_part_is_a_sentinel_and_the_db_comes_from_any_part() -> None:
    parsed = parse_sentinel_url(URL)
    assert parsed.sentinels == (("127.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26379))
    assert parsed.db == 3
    assert parsed.password is None


def test_the_password_is_the_masters() -> None:
    parsed = parse_sentinel_url("sentinel://:s%40cret@h1:1;sentinel://h2:2/0")
    assert parsed.password == "s@cret"
    assert parsed.db == 0
    assert "s@cret" not in repr(parsed)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("sentinel://h:1;redis://h:2", "'redis://h:2': expected sentinel://host[:port][/db]"),
        ("sentinel://h:1/x", "database 'x' is not a number"),
        ("sentinel://h:1/1;sentinel://h:2/2", "two different databases"),
        ("sentinel://h:99999", "sentinel URL part 'sentinel://h:99999'"),
    ],
)
def test_a_bad_url_is_refused_naming_the_setting_and_the_part(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(broker_url=url)
    assert "setting broker_url" in str(info.value)
    assert fragment in str(info.value)


def test_settings_read_the_master_name_and_add_the_password_to_every_part() -> None:
    settings = Settings.from_env(
        {
            "TASKPOOL_BROKER_URL": "sentinel://h1:1;sentinel://h2:2/1",
            "TASKPOOL_SENTINEL_MASTER": "queues",
            "TASKPOOL_REDIS_PASSWORD": "pw",
        }
    )
    assert settings.sentinel_master == "queues"
    assert settings.broker_url == "sentinel://:pw@h1:1;sentinel://:pw@h2:2/1"
    assert "pw" not in mask_url(settings.broker_url)
    assert Settings(broker_url=URL).sentinel_master == "mymaster"


def test_celery_gets_master_name_in_both_transport_options() -> None:
    app = TaskPool("s", config=False, environ={"TASKPOOL_BROKER_URL": URL, "TASKPOOL_SENTINEL_MASTER": "m1"})
    assert app.conf.broker_url == URL
    assert app.conf.result_backend == URL
    assert app.conf.broker_transport_options["master_name"] == "m1"
    assert app.conf.result_backend_transport_options["master_name"] == "m1"
    plain = TaskPool("p", config=False, environ={"TASKPOOL_BROKER_URL": "redis://h:1/0"})
    assert "master_name" not in plain.conf.broker_transport_options


def test_taskpools_own_client_asks_the_sentinels_for_the_master() -> None:
    app = TaskPool("s", config=False, environ={"TASKPOOL_BROKER_URL": URL, "TASKPOOL_SENTINEL_MASTER": "m1"})
    pool = app.redis.connection_pool  # built without connecting
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "m1"
    assert pool.connection_kwargs["db"] == 3
    hosts = [(c.connection_pool.connection_kwargs["host"], c.connection_pool.connection_kwargs["port"])
             for c in pool.sentinel_manager.sentinels]  # fmt: skip
    assert hosts == [("127.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26379)]


def test_a_sentinel_url_without_master_name_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="TASKPOOL_SENTINEL_MASTER"):
        redis_client(URL, {})
