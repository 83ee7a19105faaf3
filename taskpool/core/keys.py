"""Keyed names: a limit or rate name that names the task's parameters, like ``tenant:{tenant_id}``.

The name is formatted from the task's arguments, bound to its signature, when a request is
admitted (and checked when it is sent: a missing parameter is an error at ``.delay()``).
``{hostname}`` is not a parameter: it stands for the machine (:func:`~taskpool.core.names.expand_limit_name`).

Pure: the standard library only.
"""

from __future__ import annotations

import inspect
import re
import string
from collections.abc import Iterable, Mapping
from typing import Any

from taskpool.core.errors import ConfigurationError

#: Fields that are not parameters of the task.
RESERVED_FIELDS = ("hostname",)


def fields_of(template: str) -> list[str]:
    """The parameter names a keyed name uses (``[]`` for a plain name), in order.

    Raises:
        ValueError: unbalanced braces, a positional field ``{}`` or ``{0}``, or a format spec.
    """
    out = []
    for _, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if not field.isidentifier():
            raise ValueError(f"{{{field}}} is not a parameter name")
        if spec or conversion:
            raise ValueError(f"{{{field}}} takes no format spec or conversion")
        if field not in RESERVED_FIELDS and field not in out:
            out.append(field)
    return out


def is_keyed(template: str) -> bool:
    return bool(fields_of(template))


def signature_of(fun: Any, bound: bool) -> inspect.Signature | None:
    """The signature a call of the task binds to (``self`` dropped for ``bind=True``)."""
    try:
        sig = inspect.signature(fun)
    except (TypeError, ValueError):
        return None
    if bound:
        params = list(sig.parameters.values())[1:]
        sig = sig.replace(parameters=params)
    return sig


def bind(
    signature: inspect.Signature | None, args: Iterable[Any], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """The task's arguments by parameter name (defaults applied); ``{}`` when they do not bind."""
    if signature is None:
        return dict(kwargs)
    try:
        bound = signature.bind(*list(args or ()), **dict(kwargs or {}))
    except TypeError:
        return dict(kwargs or {})
    bound.apply_defaults()
    return dict(bound.arguments)


def matches(template: str, name: str, hostname: str | None = None) -> bool:
    """Whether ``name`` is ``template`` formatted with some arguments (``{hostname}`` as given, or
    any value)."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(re.escape(hostname) if field == "hostname" and hostname else r"[^\s{}]+")
    return re.fullmatch("".join(parts), name) is not None


def format_name(task: str, option: str, template: str, arguments: Mapping[str, Any]) -> str:
    """``template`` with each ``{parameter}`` replaced by its argument (``{hostname}`` kept).

    Raises:
        ConfigurationError: a parameter the name uses has no argument, naming the task, the
            option and the parameter.
    """
    values: dict[str, Any] = {field: "{" + field + "}" for field in RESERVED_FIELDS}
    for field in fields_of(template):
        if field not in arguments:
            raise ConfigurationError(
                f"task {task!r}: {option} name {template!r} needs the argument {field!r}, "
                f"which this call does not give (got {sorted(arguments)})"
            )
        value = str(arguments[field])
        if not value or any(c.isspace() or not c.isprintable() or c in "{}" for c in value):
            raise ConfigurationError(
                f"task {task!r}: {option} name {template!r}: argument {field}={arguments[field]!r} "
                "cannot be part of a name (empty, spaces, braces or unprintable characters)"
            )
        values[field] = value
    return template.format(**values)
