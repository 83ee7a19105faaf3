"""taskpool: a worker framework on Celery and Redis for mixed I/O, CPU and GPU work.

The packages follow where their code runs (DEVELOPERS.md has the map):

- ``taskpool.core``: pure definitions (options, settings, names, limits, errors);
- ``taskpool.stores``: Redis state with no Celery (semaphores, limit sizes, dead letters, queues);
- ``taskpool.runtime``: what runs inside the process that executes a task;
- ``taskpool.client``: the app, the task class, routing and fan-out (every caller);
- ``taskpool.worker``: the worker's main process (admission, batching, autoscaling, pools);
- ``taskpool.ops``: the command line, the local stack, the embedded Redis and the demo;
- ``taskpool.compat``: every private Celery, kombu and billiard internal taskpool relies on.

Names are imported on first use, so ``import taskpool.stores.semaphores`` (Redis only) does
not import Celery. Modules that moved keep their old dotted paths (see ``_moved``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._moved import install as _install_moved

if TYPE_CHECKING:
    from .client.app import TaskPool
    from .core.batch import Batch
    from .core.errors import ConfigurationError, TaskpoolError
    from .core.options import TaskOptions
    from .runtime.gpu import current_gpus, torch_device

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
    "TaskPool": ".client.app",
    "Batch": ".core.batch",
    "TaskOptions": ".core.options",
    "ConfigurationError": ".core.errors",
    "TaskpoolError": ".core.errors",
    "current_gpus": ".runtime.gpu",
    "torch_device": ".runtime.gpu",
}

_install_moved()


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module 'taskpool' has no attribute {name!r}")
