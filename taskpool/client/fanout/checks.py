"""Checking what a fan-out is given, before anything is sent: options, inputs, each call."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from typing import Any

from celery.backends.base import DisabledBackend

from taskpool.core.errors import ConfigurationError

#: One call of a task: positional arguments, keyword arguments.
CallArgs = tuple[tuple[Any, ...], dict[str, Any]]


def check_timeout(task: Any, timeout: Any) -> float | None:
    if timeout is None:
        return None
    seconds = float(timeout) if isinstance(timeout, numbers.Real) and not isinstance(timeout, bool) else -1.0
    if not seconds >= 0:  # also NaN
        raise ConfigurationError(
            f"task {task.name!r}: timeout={timeout!r} must be a number of seconds >= 0, or None"
        )
    return None if math.isinf(seconds) else seconds


def check_flag(task: Any, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"task {task.name!r}: {name}={value!r} must be True or False")
    return value


def check_kwargs(task: Any, kwargs: Any) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise TypeError(f"task {task.name!r}: kwargs={kwargs!r} must be a dict with string keys, or None")
    return kwargs


def iterate(task: Any, option: str, items: Any) -> Iterator[Any]:
    if isinstance(items, str | bytes | dict):
        # Iterable, but almost surely a mistake: each character (key) would become an input.
        raise TypeError(
            f"task {task.name!r}: {option}={_short(items)} must be an iterable of inputs "
            f"(a list, a range, a generator, ...), not a {type(items).__name__}"
        )
    try:
        return iter(items)
    except TypeError:
        raise TypeError(
            f"task {task.name!r}: {option}={_short(items)} must be an iterable of inputs, "
            f"got a {type(items).__name__}"
        ) from None


def check_call(task: Any, index: int, call: Any) -> CallArgs:
    if not (isinstance(call, tuple) and len(call) == 2):
        raise TypeError(
            f"task {task.name!r}: call #{index} must be an (args, kwargs) pair, got {_short(call)}"
        )
    args, kwargs = call
    if not isinstance(args, tuple | list):
        raise TypeError(
            f"task {task.name!r}: arguments of input #{index} must be a tuple or a list, got {_short(args)}"
        )
    if not isinstance(kwargs, dict):
        raise TypeError(
            f"task {task.name!r}: keyword arguments of input #{index} must be a dict, got {kwargs!r}"
        )
    return tuple(args), kwargs


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_results_kept(task: Any) -> None:
    if isinstance(task.backend, DisabledBackend):
        raise ConfigurationError(f"task {task.name!r}: map needs a result backend, and the app has none")
    if task.ignore_result:
        raise ConfigurationError(
            f"task {task.name!r}: map needs the task's results, but it has ignore_result=True"
        )
