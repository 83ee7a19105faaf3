"""Retries: the task options ``retries``, ``backoff``, ``backoff_max``, ``jitter`` and ``retry_on``,
and the capped exponential backoff with full jitter that spaces the attempts."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from taskpool.core.checks import is_int, is_number, option_error

#: The task options this feature owns.
OPTIONS = ("retries", "backoff", "backoff_max", "jitter", "retry_on")

#: Cap of a single retry wait when the task does not set ``backoff_max``, seconds (at most
#: half the broker's visibility timeout).
DEFAULT_BACKOFF_MAX = 120.0


@dataclass(frozen=True)
class Backoff:
    """Wait before retry number ``n`` (0-based): ``min(cap, base * 2**n)``, fully jittered.

    With jitter the wait is uniform in ``[0, min(cap, base * 2**n)]`` (AWS's "full jitter"),
    which spreads a thundering herd of retries; without it the wait is exactly the bound.
    """

    base: float
    cap: float
    jitter: bool = True

    def bound(self, n: int) -> float:
        # 2**n overflows float for large n; the cap is reached long before.
        return self.cap if n >= 64 else min(self.cap, self.base * (2.0**n))

    def delay(self, n: int, rng: random.Random | None = None) -> float:
        upper = self.bound(n)
        if not self.jitter:
            return upper
        return (rng or random).uniform(0.0, upper)


def validate(task: str, o: dict[str, Any], *, pool: str, visibility_timeout: float) -> dict[str, Any]:
    """The retry options checked: the TaskOptions fields they set.

    Every wait stays below the broker's visibility timeout, or a waiting retry is delivered twice.
    """
    retries = o.get("retries", 0)
    if not is_int(retries) or retries < 0:
        raise option_error(task, "retries", retries, "must be an integer >= 0")
    backoff = o.get("backoff", 1.0)
    if not is_number(backoff) or backoff < 0:
        raise option_error(task, "backoff", backoff, "must be a number of seconds >= 0")
    if backoff >= visibility_timeout:
        raise option_error(
            task,
            "backoff",
            backoff,
            f"must stay below the broker's visibility timeout ({visibility_timeout:g} s), "
            "or a waiting retry is delivered twice",
        )
    # The default cap stays below the visibility timeout on its own; an explicit one must.
    backoff_max = o.get("backoff_max", min(DEFAULT_BACKOFF_MAX, visibility_timeout / 2))
    if not is_number(backoff_max) or backoff_max < 0:
        raise option_error(task, "backoff_max", backoff_max, "must be a number of seconds >= 0")
    if "backoff_max" not in o and backoff_max < backoff:
        backoff_max = backoff
    if backoff_max < backoff:
        raise option_error(
            task, "backoff_max", backoff_max, f"is below backoff={backoff!r}; it caps every wait"
        )
    if backoff_max >= visibility_timeout:
        raise option_error(
            task,
            "backoff_max",
            backoff_max,
            f"must stay below the broker's visibility timeout ({visibility_timeout:g} s), "
            "or a waiting retry is delivered twice; raise TASKPOOL_VISIBILITY_TIMEOUT or lower it",
        )
    jitter = o.get("jitter", True)
    if not isinstance(jitter, bool):
        raise option_error(task, "jitter", jitter, "must be True or False")
    retry_on = o.get("retry_on", (Exception,))
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    if (
        not isinstance(retry_on, (tuple, list))
        or not retry_on
        or not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on)
    ):
        raise option_error(task, "retry_on", retry_on, "must be an exception class or a tuple of them")
    return {
        "retries": retries,
        "backoff": float(backoff),
        "backoff_max": float(backoff_max),
        "jitter": jitter,
        "retry_on": tuple(retry_on),
    }
