"""Limits: the task options ``max_in_flight``, ``cluster_max_in_flight``, ``limits`` and
``gpu_slots``, and what they mean in Redis: which semaphores a task needs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskpool.core import keys, names
from taskpool.core.checks import is_int, option_error
from taskpool.core.errors import ConfigurationError
from taskpool.core.names import expand_limit_name as expand_limit_name
from taskpool.core.names import machine_name as machine_name
from taskpool.core.settings import configured_gpus

if TYPE_CHECKING:
    from taskpool.core.options import TaskOptions

#: The task options this feature owns.
OPTIONS = ("max_in_flight", "cluster_max_in_flight", "limits", "gpu_slots")


@dataclass(frozen=True)
class Need:
    """``count`` slots of the semaphore ``name`` of ``capacity`` slots."""

    name: str
    capacity: int
    count: int
    kind: str  # one of taskpool.core.names.KINDS: the kind of semaphore ``name`` is


#: The largest size a named limit may have. The acquire script scans slot indices up to the
#: size, and Redis integers end at 2**63: a size beyond this is a typo, not a limit.
MAX_LIMIT_SIZE = 100_000
#: The longest name of a named limit.
MAX_LIMIT_NAME = 200


def check_limit_name(name: object) -> str:
    """``name`` if it can name a limit, else :class:`ConfigurationError` saying why."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"limit name {name!r}: must be a non-empty string, e.g. license:matlab")
    if len(name) > MAX_LIMIT_NAME or any(c.isspace() or not c.isprintable() for c in name):
        raise ConfigurationError(
            f"limit name {name!r}: at most {MAX_LIMIT_NAME} printable characters, no spaces"
        )
    return name


def check_limit_size(name: str, size: object) -> int:
    """``size`` if it is a valid size of limit ``name``, else :class:`ConfigurationError`."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_LIMIT_SIZE:
        raise ConfigurationError(
            f"limit {name!r}: size must be an integer from 1 to {MAX_LIMIT_SIZE:,}, got {size!r}"
        )
    return size


def parse_stored_size(name: str, raw: bytes | str) -> int:
    """A size read from Redis; :class:`ConfigurationError` for anything not written by
    :meth:`LimitStore.set` (edited by hand, or by an older version)."""
    text = raw.decode(errors="backslashreplace") if isinstance(raw, bytes) else raw
    try:
        size = int(text)
    except ValueError:
        size = None
    if size is None or not 1 <= size <= MAX_LIMIT_SIZE:
        raise ConfigurationError(
            f"limit {name!r}: the stored size {text!r} is not an integer from 1 to {MAX_LIMIT_SIZE:,}; "
            f"set it again with `taskpool limits set {name} N`"
        )
    return size


def gpu_count() -> int:
    """GPU slots of this host: ``TASKPOOL_GPUS``, else ``torch.cuda.device_count()``, else 0."""
    configured = configured_gpus()
    if configured is not None:
        return configured
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count())  # NVML only: CUDA is not initialised in this process


def limit_names(options: TaskOptions, arguments: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Declared limit name -> the limit's name for one call (keyed names formatted from
    ``arguments``, ``{hostname}`` expanded).

    Raises:
        ConfigurationError: a keyed name's parameter has no argument in this call.
    """
    return {
        raw: expand_limit_name(
            keys.format_name(options.task, "limits", raw, arguments or {}) if keys.is_keyed(raw) else raw
        )
        for raw in options.limits
    }


def check_call(options: TaskOptions, arguments: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigurationError` if a keyed name of the task cannot be formatted for a call
    with ``arguments`` (at ``.delay()``, before the message is sent)."""
    limit_names(options, arguments)
    if options.cluster_key is not None:
        keys.format_name(options.task, "cluster_max_in_flight", options.cluster_key, arguments)
    for raw in options.rates:
        if keys.is_keyed(raw):
            keys.format_name(options.task, "rates", raw, arguments)


def check_parameters(options: TaskOptions, signature: Any) -> None:
    """Raise :class:`ConfigurationError` if a keyed name names a parameter the task does not take
    (``signature``: an ``inspect.Signature``, or ``None`` when unknown)."""
    if signature is None:
        return
    params = signature.parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    declared = [("limits", n) for n in options.limits] + [("rates", n) for n in options.rates]
    if options.cluster_key is not None:
        declared.append(("cluster_max_in_flight", options.cluster_key))
    for option, name in declared:
        for field in keys.fields_of(name):
            if field not in params:
                raise ConfigurationError(
                    f"task {options.task!r}: {option} name {name!r} names {{{field}}}, which is not a "
                    f"parameter of the task (its parameters: {', '.join(params) or 'none'})"
                )


def is_keyed(options: TaskOptions) -> bool:
    """Whether a name of the task's limits or rates is formatted from the call's arguments."""
    return (
        options.cluster_key is not None
        or any(keys.is_keyed(n) for n in options.limits)
        or any(keys.is_keyed(n) for n in options.rates)
    )


def needs_of(
    options: TaskOptions,
    *,
    node: str,
    limit_sizes: Mapping[str, int | None],
    gpus: int,
    arguments: Mapping[str, Any] | None = None,
) -> list[Need]:
    """The semaphores a task needs on worker ``node`` for a call with ``arguments``, in a fixed order.

    A keyed limit (``limits={"tenant:{tenant_id}": 5}``) has the declared number as its size
    (each run takes one slot) unless ``taskpool limits set`` stored one for the key.

    Raises:
        ConfigurationError: a named limit has no size (limits are strict), the task wants
            more GPU slots than this host has, or a keyed name's parameter has no argument.
    """
    task = options.task
    needs: list[Need] = []
    if options.max_in_flight:
        needs.append(Need(names.node_semaphore(node, task), options.max_in_flight, 1, names.MAX_IN_FLIGHT))
    if options.cluster_max_in_flight:
        key = None
        if options.cluster_key is not None:
            key = keys.format_name(task, "cluster_max_in_flight", options.cluster_key, arguments or {})
        needs.append(
            Need(
                names.task_semaphore(task, key),
                options.cluster_max_in_flight,
                1,
                names.CLUSTER_MAX_IN_FLIGHT,
            )
        )
    expanded = limit_names(options, arguments)
    for raw_name, count in sorted(options.limits.items()):
        name = expanded[raw_name]
        size = limit_sizes.get(name)
        if keys.is_keyed(raw_name):
            if size is None:
                size = check_limit_size(name, count)
            count = 1
        if size is None:
            raise ConfigurationError(
                f"task {task!r}: limit {name!r} has no size, so the task cannot run (limits are strict); "
                f"set it with `taskpool limits set {name} N`"
            )
        if count > size:
            raise ConfigurationError(
                f"task {task!r}: limits={{{raw_name!r}: {count}}} needs more slots than limit {name!r} "
                f"has ({size}); it could never run"
            )
        needs.append(Need(names.limit_semaphore(name), size, count, names.LIMIT))
    if options.gpu_slots:
        if options.gpu_slots > gpus:
            raise ConfigurationError(
                f"task {task!r}: gpu_slots={options.gpu_slots} but this host has {gpus} GPU slot(s) "
                "(set TASKPOOL_GPUS on a CPU machine)"
            )
        needs.append(Need(names.gpu_semaphore(machine_name()), gpus, options.gpu_slots, names.GPU))
    return needs


def validate(task: str, o: dict[str, Any], *, pool: str, visibility_timeout: float) -> dict[str, Any]:
    """The limit options checked: the TaskOptions fields they set."""
    for option in ("max_in_flight", "cluster_max_in_flight"):
        value = o.get(option)
        if option == "cluster_max_in_flight" and isinstance(value, Mapping):
            continue  # keyed: checked below
        if value is not None and (not is_int(value) or value < 1):
            raise option_error(task, option, value, "must be an integer >= 1")
    limits = o.get("limits") or {}
    if not isinstance(limits, Mapping):
        raise option_error(
            task, "limits", limits, 'must map limit names to slots, like {"license:matlab": 1}'
        )
    for name, slots in limits.items():
        try:
            ok = isinstance(name, str) and bool(name.strip()) and keys.fields_of(name) is not None
        except ValueError:
            ok = False
        if not ok:
            raise option_error(
                task,
                "limits",
                dict(limits),
                f"has an invalid limit name {name!r} (non-empty; braces only around a parameter "
                "of the task, like tenant:{tenant_id}, or {hostname})",
            )
        if not is_int(slots) or slots < 1:
            raise option_error(
                task, "limits", dict(limits), f"gives limit {name!r} {slots!r} slots; need an integer >= 1"
            )
    cluster = o.get("cluster_max_in_flight")
    cluster_key = None
    if isinstance(cluster, Mapping):
        bad = len(cluster) != 1
        if not bad:
            ((cluster_key, cluster),) = cluster.items()
            try:
                bad = not isinstance(cluster_key, str) or not keys.is_keyed(cluster_key)
            except ValueError:
                bad = True
            bad = bad or not is_int(cluster) or cluster < 1
        if bad:
            raise option_error(
                task,
                "cluster_max_in_flight",
                dict(o["cluster_max_in_flight"]),
                'must be an integer >= 1, or one keyed name -> size like {"{tenant_id}": 5}',
            )
    gpu_slots = o.get("gpu_slots", 0)
    if not is_int(gpu_slots) or gpu_slots < 0:
        raise option_error(task, "gpu_slots", gpu_slots, "must be an integer >= 1")
    if gpu_slots and pool == "gevent":
        raise option_error(
            task,
            "gpu_slots",
            gpu_slots,
            f"needs pool 'prefork' or 'threads', got {pool!r} "
            "(CPU-bound work stalls the gevent hub and its lease renewal)",
        )
    return {
        "max_in_flight": o.get("max_in_flight"),
        "cluster_max_in_flight": cluster,
        "cluster_key": cluster_key,
        "limits": dict(limits),
        "gpu_slots": gpu_slots,
    }
