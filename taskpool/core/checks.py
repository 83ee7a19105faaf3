"""Small value checks shared by the features that validate their own task options."""

from __future__ import annotations

import math
from typing import Any

from taskpool.core.errors import ConfigurationError


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    """An int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def option_error(task: str, option: str, value: Any, why: str) -> ConfigurationError:
    """The error of one bad task option: it names the task, the option and the value."""
    return ConfigurationError(f"task {task!r}: {option}={value!r} {why}")
