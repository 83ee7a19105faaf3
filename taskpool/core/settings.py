"""Settings: taskpool's defaults, the project's config module, then ``TASKPOOL_*`` variables.

Precedence, lowest first:

1. :data:`DEFAULTS` below (safe defaults: JSON only, late acks, Redis on localhost);
2. the config module named by ``TASKPOOL_CONFIG`` (default ``config.celery``, the
   project's ``config/celery.py``) when it can be imported;
3. environment variables: every Celery setting can be set as ``TASKPOOL_<SETTING>``
   (``TASKPOOL_WORKER_PREFETCH_MULTIPLIER=4``), converted with Celery's own types,
   plus the taskpool settings of :data:`TASKPOOL_SETTINGS` and each pool's autoscaling
   settings (:func:`autoscale_settings`, ``TASKPOOL_AUTOSCALE_*``).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from celery.app import defaults as celery_defaults
from celery.utils.serialization import strtobool

from taskpool.core.cluster import is_cluster_url, masked_cluster_url, parse_cluster_url, with_cluster_password
from taskpool.core.errors import ConfigurationError
from taskpool.core.policy import parse_bounds
from taskpool.core.sentinel import (
    DEFAULT_MASTER_NAME,
    is_sentinel_url,
    parse_sentinel_url,
    with_sentinel_password,
)

ENV_PREFIX = "TASKPOOL_"
#: URLs of a Redis taskpool can use as its broker, or for its state (which also takes a Cluster).
REDIS_URL_PREFIXES = ("redis://", "rediss://", "unix://", "sentinel://")
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_CONFIG_MODULE = "config.celery"
POOLS = ("prefork", "threads", "gevent")

#: Celery settings taskpool starts from. The broker and backend come from
#: :class:`Settings` so that the backend follows the broker unless told otherwise.
DEFAULTS: dict[str, Any] = {
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
    # At-least-once: ack after the task ran; a killed child's task goes back to the queue.
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    # worker_prefetch_multiplier: chosen per pool when the worker starts (PREFETCH_MULTIPLIER).
    "result_extended": True,
    # A result store that meets a Redis restart retries instead of failing the task.
    "result_backend_always_retry": True,
    "result_expires": 86400,
    "broker_connection_retry_on_startup": True,
    "worker_hijack_root_logger": True,
}


#: Prefetch multiplier per pool, used when the user sets none (config module,
#: ``TASKPOOL_WORKER_PREFETCH_MULTIPLIER``, ``--prefetch-multiplier``). With late acks a message
#: stays in the prefetch window until its task ends, so the window must suit the pool:
#:
#: - prefork and threads: one message per process or thread. Their pools report a finished task
#:   to the consumer's event loop, which acks it and fetches the next at once, and work that is not
#:   yet running stays in Redis, where any idle worker can take it and where a revoke (``cancel``,
#:   a ``map`` stopped early) still reaches it: Celery checks revocation when a request enters the
#:   pool, not when a reserved job starts.
#: - gevent: two per greenlet. A gevent worker has no event loop (Celery's ``synloop``); when the
#:   window is full, kombu's Redis transport stops polling and looks for credit again only after
#:   up to a second, so with a window of one per greenlet every task that fills it costs that
#:   second (200 tasks of 0.1 s at ``-c 20``: 18.5 s instead of 1.7 s, celery/celery#4378,
#:   #7718). A larger window never fills with running tasks: the greenlet pool's ``spawn`` blocks
#:   the consumer when every greenlet is busy, so the worker holds at most one message more than it
#:   runs.
PREFETCH_MULTIPLIER = {"prefork": 1, "threads": 1, "gevent": 2}


@dataclass(frozen=True)
class Settings:
    """taskpool's own settings (Celery's live in ``app.conf``).

    Attributes:
        broker_url: Redis URL of the broker (``TASKPOOL_BROKER_URL``).
        state_url: Redis URL of taskpool's state: semaphores and their lines, rates, limit sizes,
            dead letters, peer records, fleet reports (``TASKPOOL_STATE_URL``); the broker's
            Redis when unset. Also ``redis+cluster://host:port[,host:port...]`` (a Redis Cluster,
            ``rediss+cluster://`` with TLS), which the broker cannot be.
        result_backend: result backend URL; the broker's Redis when unset.
        default_pool: pool of tasks that do not name one (``TASKPOOL_DEFAULT_POOL``).
        queue_prefix: queue of pool P is ``<queue_prefix><P>`` (``TASKPOOL_QUEUE_PREFIX``).
        keyspace: prefix of taskpool's own Redis keys (``TASKPOOL_KEYSPACE``).
        visibility_timeout: seconds before Redis redelivers an unacked message
            (``TASKPOOL_VISIBILITY_TIMEOUT``); retry waits are kept below it.
        lease_ttl: seconds a limit or GPU slot stays held by a worker that stopped renewing it
            (``TASKPOOL_LEASE_TTL``); live workers renew every ttl/3.
        config_module: dotted path of the project's config module (``TASKPOOL_CONFIG``).
        map_max_outstanding: inputs of one ``task.map``/``starmap`` submitted but not yet
            returned to the caller, at most (``TASKPOOL_MAP_MAX_OUTSTANDING``): backpressure.
        max_queue_length: ``map``, ``starmap`` and ``spawn`` refuse to publish to a queue that
            holds this many messages or more, with :class:`~taskpool.errors.QueueFull`
            (``TASKPOOL_MAX_QUEUE_LENGTH``; 0, the default, means no limit).
        max_message_size: a task message (serialized, before compression) larger than this
            many bytes is refused at publish with :class:`~taskpool.errors.MessageTooLarge`
            (``TASKPOOL_MAX_MESSAGE_SIZE``, 10 MiB; 0: no limit).
        result_args_max_size: args or kwargs longer than this many bytes (as JSON) are left out
            of stored results, replaced by a marker (``TASKPOOL_RESULT_ARGS_MAX_SIZE``, 64 KiB;
            0: keep them whatever their size).
    """

    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str | None = None
    state_url: str | None = None
    default_pool: str = "prefork"
    queue_prefix: str = "taskpool."
    keyspace: str = "taskpool"
    visibility_timeout: float = 3600.0
    lease_ttl: float = 30.0
    config_module: str = DEFAULT_CONFIG_MODULE
    map_max_outstanding: int = 1000
    max_queue_length: int = 0
    max_message_size: int = 10 * 1024 * 1024
    result_args_max_size: int = 64 * 1024
    sentinel_master: str = DEFAULT_MASTER_NAME

    def __post_init__(self) -> None:
        if self.default_pool not in POOLS:
            raise ConfigurationError(
                f"setting default_pool: expected one of {', '.join(POOLS)}, got {self.default_pool!r}"
            )
        if is_cluster_url(self.broker_url):
            raise ConfigurationError(
                f"setting broker_url: the broker cannot be a Redis Cluster (kombu's Redis transport "
                f"does not support it), got {mask_url(self.broker_url)!r}; keep the broker on one Redis "
                "(or Sentinel) and put taskpool's state on the Cluster with TASKPOOL_STATE_URL"
            )
        if not self.broker_url.startswith(REDIS_URL_PREFIXES):
            raise ConfigurationError(
                f"setting broker_url: taskpool needs a Redis broker (redis://, rediss://, unix:// or "
                f"sentinel://), got {mask_url(self.broker_url)!r}"
            )
        if self.state_url:
            self._check_state_url(self.state_url)
        for name in ("broker_url", "result_backend", "state_url"):
            url = getattr(self, name)
            if url and is_sentinel_url(url):
                try:
                    parse_sentinel_url(url)
                except ConfigurationError as exc:
                    raise ConfigurationError(f"setting {_label(name)}: {exc}") from None
                if not self.sentinel_master:
                    raise ConfigurationError(
                        f"setting {_label(name)} is a sentinel:// URL: "
                        "TASKPOOL_SENTINEL_MASTER must name the master"
                    )
        if not self.lease_ttl >= 0.1:
            raise ConfigurationError(f"setting lease_ttl: must be >= 0.1 seconds, got {self.lease_ttl!r}")
        if isinstance(self.map_max_outstanding, bool) or not (
            isinstance(self.map_max_outstanding, int) and self.map_max_outstanding >= 1
        ):
            raise ConfigurationError(
                f"setting map_max_outstanding: must be an integer >= 1, got {self.map_max_outstanding!r}"
            )
        if isinstance(self.max_queue_length, bool) or not (
            isinstance(self.max_queue_length, int) and self.max_queue_length >= 0
        ):
            raise ConfigurationError(
                "setting max_queue_length: must be an integer >= 0 (0: no limit), "
                f"got {self.max_queue_length!r}"
            )
        for name in ("max_message_size", "result_args_max_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, int) and value >= 0):
                raise ConfigurationError(
                    f"setting {name}: must be an integer number of bytes >= 0 (0: no limit), got {value!r}"
                )
        if not self.visibility_timeout > 0:
            raise ConfigurationError(
                f"setting visibility_timeout: must be > 0 seconds, got {self.visibility_timeout!r}"
            )

    @staticmethod
    def _check_state_url(url: str) -> None:
        where = f"setting state_url (TASKPOOL_STATE_URL={mask_url(url)!r})"
        if is_cluster_url(url):
            try:
                parse_cluster_url(url)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{where}: {exc}") from None
        elif not url.startswith(REDIS_URL_PREFIXES):
            raise ConfigurationError(
                f"{where}: expected a Redis URL: redis://, rediss://, unix://, sentinel:// or a Redis "
                "Cluster's redis+cluster://host:port[,host2:port2...] (rediss+cluster:// with TLS)"
            )

    def __repr__(self) -> str:  # the URLs' passwords masked: a repr ends up in logs
        fields = ", ".join(
            f"{name}={mask_url(value) if name in _URL_FIELDS and value else value!r}"
            for name, value in vars(self).items()
        )
        return f"Settings({fields})"

    @property
    def redis_url(self) -> str:
        """Where taskpool keeps its own keys (its state): ``state_url``, else the broker's Redis."""
        return self.state_url or self.broker_url

    @property
    def state_is_apart(self) -> bool:
        """Whether the state has a Redis of its own (a ``state_url`` other than the broker's)."""
        return bool(self.state_url) and self.state_url != self.broker_url

    def queue_for(self, pool: str, gpu: bool = False) -> str:
        """Queue of a pool's tasks; tasks that need GPU slots have their own (``<queue>.gpu``),
        consumed only by workers whose host has GPU slots."""
        return f"{self.queue_prefix}{pool}.gpu" if gpu else f"{self.queue_prefix}{pool}"

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        base: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Read ``TASKPOOL_*`` variables over ``base``; keyword arguments win over both."""
        env = dict(os.environ if environ is None else environ)
        for alias, name in _ENV_ALIASES.items():
            if ENV_PREFIX + alias in env:
                env.setdefault(ENV_PREFIX + name.upper(), env[ENV_PREFIX + alias])
        values: dict[str, Any] = {k: v for k, v in (base or {}).items() if k in TASKPOOL_SETTINGS}
        for name, convert in TASKPOOL_SETTINGS.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                try:
                    values[name] = convert(raw)
                except ValueError:
                    raise ConfigurationError(
                        f"environment {ENV_PREFIX}{name.upper()}={raw!r}: not a valid {convert.__name__}"
                    ) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        password = env.get(ENV_PREFIX + "REDIS_PASSWORD")
        if password:
            # A password kept apart from the URLs (compose reads it from a git-ignored env file).
            values["broker_url"] = with_password(values.get("broker_url", DEFAULT_BROKER_URL), password)
            for name in ("result_backend", "state_url"):
                if values.get(name):
                    values[name] = with_password(values[name], password)
        return cls(**values)


#: taskpool's own settings and how each is read from its environment variable.
TASKPOOL_SETTINGS: dict[str, Any] = {
    "broker_url": str,
    "result_backend": str,
    "state_url": str,
    "default_pool": str,
    "queue_prefix": str,
    "keyspace": str,
    "visibility_timeout": float,
    "lease_ttl": float,
    "config_module": str,
    "map_max_outstanding": int,
    "max_queue_length": int,
    "max_message_size": int,
    "result_args_max_size": int,
    "sentinel_master": str,
}


def _label(name: str) -> str:
    """A setting's name in an error: ``state_url`` also by its variable (it has no Celery twin)."""
    return f"{name} ({ENV_PREFIX}{name.upper()})" if name == "state_url" else name


#: Settings holding a URL (masked in a repr).
_URL_FIELDS = ("broker_url", "result_backend", "state_url")
# TASKPOOL_CONFIG is the documented name of config_module.
_ENV_ALIASES = {"CONFIG": "config_module"}
_CELERY_OPTIONS = dict(celery_defaults.flatten(celery_defaults.NAMESPACES))


# -- variables read outside the app's settings --------------------------------------------------
#: The broker every process of a project uses (also :attr:`Settings.broker_url`).
BROKER_URL_ENV = "TASKPOOL_BROKER_URL"
#: GPU slots of this host (else the GPUs torch counts).
GPUS_ENV = "TASKPOOL_GPUS"
#: Port of a worker's Prometheus metrics (0 or unset: off), and the address served on.
METRICS_PORT_ENV = "TASKPOOL_METRICS_PORT"
METRICS_ADDRESS_ENV = "TASKPOOL_METRICS_ADDRESS"
DEFAULT_METRICS_ADDRESS = "127.0.0.1"
#: The app `taskpool` commands load when ``-A`` is not given.
APP_ENV = "TASKPOOL_APP"
#: The ``redis-server`` binary of the embedded Redis.
REDIS_SERVER_ENV = "TASKPOOL_REDIS_SERVER"


def env_broker_url(environ: Mapping[str, str] | None = None) -> str | None:
    """``TASKPOOL_BROKER_URL`` as given (no default, no password added); None when unset or empty."""
    env = os.environ if environ is None else environ
    return env.get(BROKER_URL_ENV) or None


def configured_gpus(environ: Mapping[str, str] | None = None) -> int | None:
    """``TASKPOOL_GPUS`` as an int >= 0; None when unset or empty.

    Raises:
        ConfigurationError: it is not an integer >= 0.
    """
    env = os.environ if environ is None else environ
    configured = env.get(GPUS_ENV)
    if configured in (None, ""):
        return None
    try:
        value = int(configured)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigurationError(f"TASKPOOL_GPUS={configured!r}: expected an integer >= 0")
    return value


def metrics_port(environ: Mapping[str, str] | None = None, default: int = 0) -> int:
    """``TASKPOOL_METRICS_PORT`` as an int (0: metrics off); ``default`` when unset or blank.

    Raises:
        ConfigurationError: it is not a port number.
    """
    env = os.environ if environ is None else environ
    raw = env.get(METRICS_PORT_ENV, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"TASKPOOL_METRICS_PORT={raw!r}: expected a port number 0-65535 (0: off)")
    return port


def metrics_address(environ: Mapping[str, str] | None = None) -> str:
    """``TASKPOOL_METRICS_ADDRESS``: where a worker serves its metrics (default 127.0.0.1)."""
    env = os.environ if environ is None else environ
    return env.get(METRICS_ADDRESS_ENV) or DEFAULT_METRICS_ADDRESS


def env_app_path(environ: Mapping[str, str] | None = None) -> str | None:
    """``TASKPOOL_APP``: the app `taskpool` commands load without ``-A``; None when unset or empty."""
    env = os.environ if environ is None else environ
    return env.get(APP_ENV) or None


def redis_server_binary(environ: Mapping[str, str] | None = None) -> str | None:
    """``TASKPOOL_REDIS_SERVER``: the ``redis-server`` to run for an embedded Redis; None: look for one."""
    env = os.environ if environ is None else environ
    return env.get(REDIS_SERVER_ENV) or None


def load_config_module(path: str, *, required: bool) -> Any | None:
    """Import the project's config module; None when it is absent and not required."""
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        if required or (exc.name and not path.startswith(exc.name)):
            # A module that exists but fails on its own imports must not be silently skipped.
            raise ConfigurationError(f"config module {path!r} could not be imported: {exc}") from exc
        return None


def celery_env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Celery settings given as ``TASKPOOL_<SETTING>``, converted with Celery's types."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in TASKPOOL_SETTINGS or name.upper() in _ENV_ALIASES:
            continue
        if name not in _CELERY_OPTIONS:
            continue  # not a Celery setting: taskpool's own variables are read elsewhere
        out[name] = _convert(key, raw, _CELERY_OPTIONS[name].type)
    return out


def _convert(key: str, raw: str, kind: str) -> Any:
    try:
        if kind == "list":
            return [part.strip() for part in raw.split(",") if part.strip()]
        if kind in ("dict", "tuple"):
            value = json.loads(raw)
            return tuple(value) if kind == "tuple" else dict(value)
        if kind == "bool":
            return strtobool(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        return raw
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"environment {key}={raw!r}: expected a {kind} ({exc})") from None


def autoscale_settings(
    pool: str, environ: Mapping[str, str] | None = None, conf: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``pool``'s autoscaling settings, as keyword arguments of ``AutoscaleConfig`` (pool excluded).

    Read from ``environ`` (default ``os.environ``) over ``conf`` (the config module's lowercase
    names, ``autoscale_gevent``): ``TASKPOOL_AUTOSCALE_<POOL>`` (``"max,min"``), then
    ``TASKPOOL_AUTOSCALE_<POOL>_<NAME>`` over ``TASKPOOL_AUTOSCALE_<NAME>`` for ``BUFFER``,
    ``COOLDOWN``, ``TARGET_CPU`` and ``CALLBACK_TIMEOUT``, and the concurrency modifier's dotted
    path from ``TASKPOOL_CONCURRENCY_MODIFIER_<POOL>``. Only the settings found are returned.

    Raises:
        ConfigurationError: for a value of the wrong type, naming the setting and the value.
    """
    env = os.environ if environ is None else environ
    conf = conf or {}

    def raw(*names: str) -> tuple[str, Any] | None:
        for name in names:  # most specific first; the environment before the config module
            value = env.get(ENV_PREFIX + name.upper())
            if value not in (None, ""):
                return ENV_PREFIX + name.upper(), value
        for name in names:
            value = conf.get(name.lower())
            if value not in (None, ""):
                return name.lower(), value
        return None

    def number(kind: Callable[[Any], Any], name: str) -> Any:
        found = raw(f"autoscale_{pool}_{name}", f"autoscale_{name}")
        if found is None:
            return None
        key, value = found
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ConfigurationError(f"setting {key}={value!r}: expected a {kind.__name__}") from None

    values: dict[str, Any] = {}
    bounds = raw(f"autoscale_{pool}")
    if bounds is not None:
        values["max"], values["min"] = parse_bounds(bounds[1], what=bounds[0])
    numbers = (("buffer", int), ("cooldown", float), ("target_cpu", float), ("callback_timeout", float))
    for name, kind in numbers:
        value = number(kind, name)
        if value is not None:
            values[name] = value
    modifier = raw(f"concurrency_modifier_{pool}")
    if modifier is not None:
        values["modifier"] = modifier[1]
    return values


#: Settings that name a serializer or the content types a process accepts.
SERIALIZER_SETTINGS = (
    "task_serializer",
    "result_serializer",
    "event_serializer",
    "accept_content",
    "result_accept_content",
    "event_accept_content",
)


def check_json_only(conf: Mapping[str, Any]) -> None:
    """Refuse a configuration that would serialize or accept anything but JSON (pickle runs
    code on load). Called when the app is built and again when a worker starts and before each
    publish, so a later ``app.conf.update(...)`` or ``TASKPOOL_EVENT_SERIALIZER`` is caught.
    """
    for key in SERIALIZER_SETTINGS:
        value = conf.get(key)
        values = [value] if isinstance(value, str) else list(value or [])
        bad = [v for v in values if "json" not in str(v)]
        if bad:
            raise ConfigurationError(f"setting {key}={value!r}: taskpool accepts JSON only, never pickle")


def mask_url(url: str) -> str:
    """``url`` fit to print or log: its password replaced by ``**``."""
    from kombu.utils.url import maybe_sanitize_url

    if is_sentinel_url(url):  # one URL per sentinel, each masked
        return ";".join(str(maybe_sanitize_url(part)) for part in url.split(";"))
    if is_cluster_url(url):  # several host:port pairs: not a URL urllib can parse
        return masked_cluster_url(url)
    return str(maybe_sanitize_url(url))


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` for Redis AUTH, unless the URL names a password itself."""
    from urllib.parse import quote, urlsplit, urlunsplit

    if is_sentinel_url(url):
        return with_sentinel_password(url, password)
    if is_cluster_url(url):
        return with_cluster_password(url, password)
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or parts.password:
        return url
    user = quote(parts.username or "", safe="")
    netloc = f"{user}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


#: Port of the fleet controller's HTTP endpoint (/metrics and /keda), ``taskpool up --fleet``.
FLEET_PORT_ENV = "TASKPOOL_FLEET_PORT"
DEFAULT_FLEET_PORT = 9809


def fleet_settings(pool: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``pool``'s fleet policy from the environment, as keyword arguments of ``FleetPolicy``:
    ``TASKPOOL_FLEET_<POOL>`` (``"max,min"``, min may be 0), then ``TASKPOOL_FLEET_<POOL>_<NAME>``
    over ``TASKPOOL_FLEET_<NAME>`` for ``BUFFER`` (buffer_workers) and ``SCALEDOWN_WINDOW``
    (seconds). Only the settings found are returned.

    Raises:
        ConfigurationError: for a value of the wrong type, naming the setting and the value.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    key = f"{ENV_PREFIX}FLEET_{pool.upper()}"
    if env.get(key):
        values["max_workers"], low = parse_bounds(env[key], what=key)
        if low is not None:
            values["min_workers"] = low
    for name, option, kind in (
        ("BUFFER", "buffer_workers", int),
        ("SCALEDOWN_WINDOW", "scaledown_window", float),
    ):
        for variable in (f"{key}_{name}", f"{ENV_PREFIX}FLEET_{name}"):
            value = env.get(variable)
            if value:
                try:
                    values[option] = kind(value)
                except ValueError:
                    raise ConfigurationError(
                        f"setting {variable}={value!r}: expected a {kind.__name__}"
                    ) from None
                break
    return values


def fleet_port(environ: Mapping[str, str] | None = None) -> int:
    """``TASKPOOL_FLEET_PORT`` (default 9809; 0: no HTTP endpoint)."""
    env = os.environ if environ is None else environ
    value = env.get(FLEET_PORT_ENV) or str(DEFAULT_FLEET_PORT)
    try:
        port = int(value)
    except ValueError:
        raise ConfigurationError(f"setting {FLEET_PORT_ENV}={value!r}: expected a port number") from None
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"setting {FLEET_PORT_ENV}={value!r}: expected a port number 0-65535")
    return port
