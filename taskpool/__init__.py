"""taskpool: a worker framework on Celery and Redis for mixed I/O, CPU and GPU work.

Names are imported on first use, so ``import taskpool.semaphores`` (Redis only) does not
import Celery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import TaskPool
    from .batching import Batch
    from .errors import ConfigurationError, TaskpoolError
    from .gpu import current_gpus, torch_device
    from .options import TaskOptions

__all__ = [
    "Batch",
    "ConfigurationError",
    "TaskOptions",
    "TaskPool",
    "TaskpoolError",
    "current_gpus",
    "torch_device",
]
__version__ = "0.1.0"

_WHERE = {
    "TaskPool": ".app",
    "Batch": ".batching",
    "TaskOptions": ".options",
    "ConfigurationError": ".errors",
    "TaskpoolError": ".errors",
    "current_gpus": ".gpu",
    "torch_device": ".gpu",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module 'taskpool' has no attribute {name!r}")
