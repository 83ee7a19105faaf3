"""Redis Cluster URLs for taskpool's state (``TASKPOOL_STATE_URL``):
``redis+cluster://[[user]:password@]host:port[,host2:port2...][/0]``, ``rediss+cluster://`` for TLS.

The ``+cluster`` suffix is the form kombu uses for a variant of a scheme (``redis+socket://``);
the hosts are seed nodes, any reachable one is enough (redis-py's ``RedisCluster`` learns the
rest from ``CLUSTER SLOTS``). A Cluster has database 0 only. Standard library only:
:mod:`taskpool.stores.redis_client` turns the result into a ``redis.cluster.RedisCluster``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from taskpool.core.errors import ConfigurationError

SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT = 6379
FORM = "redis+cluster://[[user]:password@]host:port[,host2:port2...][/0]"


@dataclass(frozen=True)
class ClusterURL:
    """A parsed cluster URL: seed nodes, TLS or not, and the AUTH user and password."""

    nodes: tuple[tuple[str, int], ...]
    ssl: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def is_cluster_url(url: str) -> bool:
    return url.strip().lower().startswith(tuple(f"{scheme}://" for scheme in SCHEMES))


def _split(url: str) -> tuple[str, str, str, str]:
    """``(scheme, userinfo, hosts, rest)`` of ``scheme://[userinfo@]hosts[/rest]``."""
    scheme, _, tail = url.strip().partition("://")
    netloc, slash, path = tail.partition("/")
    netloc, qmark, query = netloc.partition("?")
    rest = slash + path if slash else qmark + query
    userinfo, at, hosts = netloc.rpartition("@")
    return scheme.lower(), userinfo if at else "", hosts, rest


def parse_cluster_url(url: str) -> ClusterURL:
    """Parse a ``redis+cluster://`` or ``rediss+cluster://`` URL.

    Raises:
        ConfigurationError: anything else, naming the URL (password masked) and what is wrong.
    """
    masked = masked_cluster_url(url)
    scheme, userinfo, hosts, rest = _split(url)
    if scheme not in SCHEMES:
        raise ConfigurationError(f"Redis Cluster URL {masked!r}: expected {FORM}")
    if rest.strip("/") not in ("", "0"):
        raise ConfigurationError(
            f"Redis Cluster URL {masked!r}: a Cluster has database 0 only and this form takes no "
            f"query options (expected {FORM})"
        )
    nodes: list[tuple[str, int]] = []
    for part in (p.strip() for p in hosts.split(",")):
        if not part:
            continue
        if part.startswith("["):  # [ipv6]:port
            host, _, port_text = part[1:].partition("]")
            port_text = port_text.removeprefix(":")
        else:
            host, colon, port_text = part.rpartition(":")
            if not colon:
                host, port_text = part, ""
        if not host:
            raise ConfigurationError(f"Redis Cluster URL {masked!r}: node {part!r} has no host")
        if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
            raise ConfigurationError(f"Redis Cluster URL {masked!r}: node {part!r}: port {port_text!r}")
        nodes.append((host, int(port_text) if port_text else DEFAULT_PORT))
    if not nodes:
        raise ConfigurationError(f"Redis Cluster URL {masked!r}: names no node (expected {FORM})")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    return ClusterURL(tuple(nodes), scheme == "rediss+cluster", username, password)


def masked_cluster_url(url: str) -> str:
    """``url`` with its password replaced by ``**``."""
    scheme, userinfo, hosts, rest = _split(url)
    user, colon, secret = userinfo.partition(":")
    if not (colon and secret):
        return url
    return f"{scheme}://{user}:**@{hosts}{rest}"


def with_cluster_password(url: str, password: str) -> str:
    """``url`` with ``password`` for Redis AUTH, unless the URL names a password itself."""
    scheme, userinfo, hosts, rest = _split(url)
    user, colon, secret = userinfo.partition(":")
    if colon and secret:
        return url
    return f"{scheme}://{user}:{quote(password, safe='')}@{hosts}{rest}"
