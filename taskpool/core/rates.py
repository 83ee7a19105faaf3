"""Rates: the task option ``rates={"api:openai": "600/m"}``, enforced across every worker.

A rate is written as Celery's ``rate_limit`` is (``"10/s"``, ``"600/m"``, ``"1000/h"``, a bare
number is per second) and its name may be keyed like a limit's (``"api:{tenant_id}"``). Each run
takes one token; tokens come at an even pace (GCRA, no burst): ``600/m`` admits one run every
100 ms across the cluster. Pure: parsing and naming only; the script is
:mod:`taskpool.stores.rates`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery.utils.time import rate as celery_rate

from taskpool.core import keys
from taskpool.core.checks import option_error
from taskpool.core.errors import ConfigurationError
from taskpool.core.names import expand_limit_name

#: The task options this feature owns.
OPTIONS = ("rates",)

#: Celery's rate strings: a number, optionally ``/s``, ``/m`` or ``/h``.
_RATE = re.compile(r"^\s*(\d+(\.\d*)?)\s*(/\s*([smh])\s*)?$")


@dataclass(frozen=True)
class RateNeed:
    """One token of rate ``name`` (formatted), whose tokens come every ``interval_ms``."""

    name: str
    interval_ms: float
    text: str  # as declared, e.g. "600/m"


def parse_rate(text: object) -> float:
    """Tokens per second of a Celery-style rate string (``"600/m"`` -> 10.0).

    Raises:
        ConfigurationError: not a rate, or zero.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = str(text)
    match = _RATE.match(text) if isinstance(text, str) else None
    per_second = float(celery_rate(f"{match[1]}/{match[4] or 's'}")) if match else 0.0
    if not match or per_second <= 0:
        raise ConfigurationError(
            f"rate {text!r}: expected Celery's form N/s, N/m or N/h with N > 0, like '600/m'"
        )
    return per_second


def interval_ms(text: str) -> float:
    """Milliseconds between two tokens of the rate ``text``."""
    return 1000.0 / parse_rate(text)


def validate(task: str, o: dict[str, Any], *, pool: str, visibility_timeout: float) -> dict[str, Any]:
    """The ``rates`` option checked: the TaskOptions field it sets."""
    rates = o.get("rates") or {}
    if not isinstance(rates, Mapping):
        raise option_error(task, "rates", rates, 'must map rate names to rates, like {"api:openai": "600/m"}')
    for name, text in rates.items():
        try:
            ok = isinstance(name, str) and bool(name.strip()) and not any(c.isspace() for c in name)
            ok = ok and keys.fields_of(name) is not None
        except ValueError:
            ok = False
        if not ok:
            raise option_error(
                task,
                "rates",
                dict(rates),
                f"has an invalid rate name {name!r} (non-empty, no spaces; braces only around a "
                "parameter of the task, like api:{tenant_id})",
            )
        try:
            parse_rate(text)
        except ConfigurationError as exc:
            raise option_error(task, "rates", dict(rates), f"gives {name!r} a bad rate: {exc}") from None
    return {"rates": {name: str(text) for name, text in rates.items()}}


def rate_needs_of(options: Any, arguments: Mapping[str, Any] | None = None) -> list[RateNeed]:
    """The rate tokens one call of the task takes, in a fixed order (names formatted).

    Raises:
        ConfigurationError: a keyed name's parameter has no argument in this call.
    """
    out = []
    for raw, text in sorted(options.rates.items()):
        name = keys.format_name(options.task, "rates", raw, arguments or {}) if keys.is_keyed(raw) else raw
        out.append(RateNeed(expand_limit_name(name), interval_ms(text), text))
    return out
