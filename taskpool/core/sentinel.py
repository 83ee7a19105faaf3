"""Redis Sentinel URLs, in kombu's form: ``sentinel://[:password@]host:port;sentinel://host2:port/db``.

Each ``;``-separated URL names one sentinel; the Redis master is the one they elect for the
master name (``TASKPOOL_SENTINEL_MASTER``, Celery's ``master_name`` transport option). A password
in a URL is the master's (as kombu and Celery read it); sentinels that need one of their own take
``sentinel_kwargs`` in the transport options. The database number may be on any of the URLs.
Standard library only: :mod:`taskpool.stores.redis_client` turns the result into a client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from taskpool.core.errors import ConfigurationError

SCHEME = "sentinel"
SEPARATOR = ";"
DEFAULT_SENTINEL_PORT = 26379
#: The master name when ``TASKPOOL_SENTINEL_MASTER`` is unset (Redis' own example name).
DEFAULT_MASTER_NAME = "mymaster"


@dataclass(frozen=True)
class SentinelURL:
    """A parsed sentinel URL: the sentinels to ask, and what to pass to the master they name."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def is_sentinel_url(url: str) -> bool:
    return url.strip().lower().startswith(f"{SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``sentinel://host:port;sentinel://host2:port/db``.

    Raises:
        ConfigurationError: a part is not a ``sentinel://host[:port][/db]`` URL, naming it.
    """
    sentinels: list[tuple[str, int]] = []
    db: int | None = None
    username = password = None
    for chunk in (part.strip() for part in url.split(SEPARATOR)):
        if not chunk:
            continue
        masked = _masked(chunk)
        try:
            parts = urlsplit(chunk)
            port = parts.port or DEFAULT_SENTINEL_PORT
        except ValueError as exc:
            raise ConfigurationError(f"sentinel URL part {masked!r}: {exc}") from None
        if parts.scheme.lower() != SCHEME or not parts.hostname:
            raise ConfigurationError(f"sentinel URL part {masked!r}: expected sentinel://host[:port][/db]")
        sentinels.append((parts.hostname, port))
        path = parts.path.strip("/")
        if path:
            if not path.isdigit():
                raise ConfigurationError(f"sentinel URL part {masked!r}: database {path!r} is not a number")
            if db is not None and db != int(path):
                raise ConfigurationError(f"sentinel URL {_masked(url)!r}: two different databases")
            db = int(path)
        if parts.password and password is None:
            password = unquote(parts.password)
            username = unquote(parts.username) if parts.username else None
    if not sentinels:
        raise ConfigurationError(f"sentinel URL {url!r}: names no sentinel")
    return SentinelURL(tuple(sentinels), db or 0, username, password)


def with_sentinel_password(url: str, password: str) -> str:
    """``url`` with ``password`` (the master's) on each part that names none."""
    from urllib.parse import quote

    out = []
    for chunk in url.split(SEPARATOR):
        parts = urlsplit(chunk.strip())
        if chunk.strip() and not parts.password:
            user = quote(parts.username or "", safe="")
            netloc = f"{user}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
            chunk = parts._replace(netloc=netloc).geturl()
        out.append(chunk)
    return SEPARATOR.join(out)


def _masked(url: str) -> str:
    parts = urlsplit(url) if "://" in url else None
    if parts is None or not parts.password:
        return url
    return url.replace(f":{parts.password}@", ":**@")
