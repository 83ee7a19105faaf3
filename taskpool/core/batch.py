"""The ``batch=`` task option: how a batched task collects its inputs, and its validation.

The batching itself runs in the worker (:mod:`taskpool.worker.batching`) and in the pool
process (:mod:`taskpool.runtime.batch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from taskpool.core.checks import is_int, is_number, option_error

#: The task options this feature owns.
OPTIONS = ("batch",)


@dataclass(frozen=True)
class Batch:
    """How a batched task collects its inputs.

    Attributes:
        max_size: most inputs per call of the function (>= 1).
        wait_ms: longest wait after the first input of a batch before the function is called
            with what has arrived (>= 0 milliseconds).
    """

    max_size: int = 32
    wait_ms: float = 100.0


def validate(task: str, o: dict[str, Any], *, pool: str, visibility_timeout: float) -> dict[str, Any]:
    """``batch=`` checked: the TaskOptions field it sets."""
    batch = o.get("batch")
    if batch is not None:
        if not isinstance(batch, Batch):
            raise option_error(task, "batch", batch, "must be a taskpool.Batch(max_size=..., wait_ms=...)")
        if not is_int(batch.max_size) or batch.max_size < 1:
            raise option_error(task, "batch", batch, "needs max_size, an integer >= 1")
        if not is_number(batch.wait_ms) or batch.wait_ms < 0:
            raise option_error(task, "batch", batch, "needs wait_ms, a number of milliseconds >= 0")
        if batch.wait_ms / 1000.0 >= visibility_timeout:
            raise option_error(
                task, "batch", batch, f"waits past the broker's visibility timeout ({visibility_timeout:g} s)"
            )
    return {"batch": batch}
