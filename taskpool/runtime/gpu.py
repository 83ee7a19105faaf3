"""Which GPU slots the running task holds, and the torch device they stand for.

The worker's main process leases GPU slots (see :mod:`taskpool.admission`) and sends the
slot indices with the request; the task reads them here. torch is imported only on use.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from taskpool.core import names

#: GPUs of the running batch (a batched task's function serves many requests at once).
_batch_gpus: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "taskpool_batch_gpus", default=None
)


@contextlib.contextmanager
def leased_gpus(gpus: list[int]) -> Iterator[None]:
    """Make :func:`current_gpus` answer ``gpus`` in this block (a batch's leased GPUs)."""
    token = _batch_gpus.set(list(gpus))
    try:
        yield
    finally:
        _batch_gpus.reset(token)


def current_gpus() -> list[int]:
    """GPU indices leased to the running task (``[]`` outside a task or without ``gpu_slots``)."""
    from celery import current_task

    batch = _batch_gpus.get()
    if batch:
        return [int(g) for g in batch]
    request = getattr(current_task, "request", None)
    gpus = getattr(request, names.GPUS_KEY, None) if request is not None else None
    return [int(g) for g in gpus] if gpus else []


def torch_device() -> Any:
    """``torch.device`` of the task's first leased GPU; ``cpu`` where there is none or no CUDA."""
    import torch

    gpus = current_gpus()
    if gpus and torch.cuda.is_available() and gpus[0] < torch.cuda.device_count():
        return torch.device("cuda", gpus[0])
    return torch.device("cpu")


def use_leased_device(gpus: list[int]) -> None:
    """Make the leased GPU current for this process (a reused prefork child switches devices).

    ``CUDA_VISIBLE_DEVICES`` is ignored once CUDA has started in a process, so the device is
    selected with ``torch.cuda.set_device``; where torch or CUDA is absent this does nothing.
    """
    import sys

    torch = sys.modules.get("torch")
    if not gpus or torch is None:
        return
    if torch.cuda.is_available() and gpus[0] < torch.cuda.device_count():
        torch.cuda.set_device(gpus[0])
