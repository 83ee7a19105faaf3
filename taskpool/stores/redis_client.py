"""Clients of taskpool's own Redis (semaphores, dead letters, delivery leases, the CLI, the
autoscaler's probes) for ``redis://``, ``rediss://``, ``unix://``, Redis Sentinel URLs and, for
the state only (``TASKPOOL_STATE_URL``), Redis Cluster URLs.

A ``sentinel://`` URL (:mod:`taskpool.core.sentinel`) gives a client of the master the sentinels
name for ``master_name`` (taken from the transport options, as kombu and Celery do): redis-py's
``Sentinel.master_for``, whose connections ask the sentinels again after a failover, so the same
client follows the promoted replica.

A ``redis+cluster://host:port[,host2:port2]`` URL (:mod:`taskpool.core.cluster`) gives a
``redis.cluster.RedisCluster`` seeded with those nodes. It is returned under the type of
``redis.Redis``: taskpool's state stores use only the commands both share, and the places that
must differ (the gate's BLPOP, rates across slots) test ``isinstance(client, RedisCluster)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

from taskpool.core.cluster import is_cluster_url, parse_cluster_url
from taskpool.core.errors import ConfigurationError
from taskpool.core.sentinel import is_sentinel_url, parse_sentinel_url

__all__ = ["redis_client"]


def redis_client(url: str, transport_options: Mapping[str, Any] | None = None, **kwargs: Any) -> redis.Redis:
    """A redis-py client for ``url``; ``kwargs`` go to each connection (``socket_timeout``, ...).

    Raises:
        ConfigurationError: a sentinel URL without ``master_name`` in ``transport_options``, or a
            malformed sentinel or cluster URL.
        redis.exceptions.RedisClusterException: no seed node of a cluster URL answered (redis-py
            asks the Cluster for its slots when the client is made).
    """
    if is_cluster_url(url):
        cluster = parse_cluster_url(url)
        connection = _with_auth(kwargs, cluster.username, cluster.password)
        if cluster.ssl:
            connection.setdefault("ssl", True)
        nodes = [ClusterNode(host, port) for host, port in cluster.nodes]
        return cast(redis.Redis, RedisCluster(startup_nodes=nodes, **connection))
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **kwargs)
    options = dict(transport_options or {})
    master_name = options.get("master_name")
    if not master_name:
        raise ConfigurationError(
            "a sentinel:// URL needs the master's name: set TASKPOOL_SENTINEL_MASTER "
            "(or master_name in broker_transport_options)"
        )
    target = parse_sentinel_url(url)
    connection = _with_auth(kwargs, target.username, target.password)
    connection.setdefault("db", target.db)
    sentinel_kwargs = dict(options.get("sentinel_kwargs") or {})
    for key in ("socket_timeout", "socket_connect_timeout"):
        if key in kwargs:
            sentinel_kwargs.setdefault(key, kwargs[key])
    sentinel = Sentinel(
        list(target.sentinels),
        min_other_sentinels=int(options.get("min_other_sentinels", 0)),
        sentinel_kwargs=sentinel_kwargs,
    )
    return sentinel.master_for(str(master_name), redis_class=redis.Redis, **connection)


def _with_auth(kwargs: Mapping[str, Any], username: str | None, password: str | None) -> dict[str, Any]:
    """Connection keyword arguments: ``kwargs``, plus the URL's AUTH user and password unless given."""
    connection = dict(kwargs)
    if password is not None:
        connection.setdefault("password", password)
    if username is not None:
        connection.setdefault("username", username)
    return connection
