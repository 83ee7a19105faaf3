"""Old dotted paths of modules that moved when the packages were split by where code runs.

Users name some of them in configuration (``worker_autoscaler =
"taskpool.autoscale:CallbackAutoscaler"``, ``-P taskpool.pools.threads:TaskPool``) or in code
(``from taskpool.semaphores import Semaphore``). An import of an old path returns the module
that now holds it (the same object: patching and ``isinstance`` work); a module that was split
becomes a read-only view over its parts. ``python -m taskpool.cli`` still runs the CLI.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

#: old module -> the module(s) that now hold its names, searched in order.
MOVED: dict[str, tuple[str, ...]] = {
    "taskpool.errors": ("taskpool.core.errors",),
    "taskpool.settings": ("taskpool.core.settings",),
    "taskpool.options": ("taskpool.core.options",),
    "taskpool.limits": ("taskpool.core.limits", "taskpool.stores.limits"),
    "taskpool.retry": ("taskpool.core.backoff", "taskpool.stores.dead_letters"),
    "taskpool.semaphores": ("taskpool.stores.semaphores",),
    "taskpool.semaphores.lease": ("taskpool.stores.semaphores.lease",),
    "taskpool.semaphores.semaphore": ("taskpool.stores.semaphores.semaphore",),
    "taskpool.app": ("taskpool.client.app",),
    "taskpool.task": ("taskpool.client.task",),
    "taskpool.routing": ("taskpool.client.routing",),
    "taskpool.fanout": ("taskpool.client.fanout",),
    "taskpool.publish": ("taskpool.client.publish",),
    "taskpool.results": ("taskpool.client.results",),
    "taskpool.aio": ("taskpool.runtime.aio",),
    "taskpool.gpu": ("taskpool.runtime.gpu",),
    "taskpool.batching": (
        "taskpool.core.batch",
        "taskpool.runtime.batch",
        "taskpool.worker.batching",
        "taskpool.worker.batcher",
    ),
    "taskpool.admission": (
        "taskpool.worker.admission",
        "taskpool.worker.gate",
        "taskpool.worker.holdings",
        "taskpool.runtime.leases",
        "taskpool.compat.kombu",
    ),
    "taskpool.autoscale": ("taskpool.worker.autoscale",),
    "taskpool.tuning": ("taskpool.worker.tuning",),
    "taskpool.malformed": ("taskpool.worker.malformed",),
    "taskpool.metrics": ("taskpool.worker.metrics",),
    "taskpool.stats": ("taskpool.worker.stats",),
    "taskpool.pools": ("taskpool.worker.pools",),
    "taskpool.pools.threads": ("taskpool.worker.pools.threads",),
    "taskpool.pools.prefork": ("taskpool.worker.pools.prefork",),
    "taskpool.cli": ("taskpool.ops.cli",),
    "taskpool.stack": ("taskpool.ops.stack",),
    "taskpool.embedded": ("taskpool.ops.embedded",),
    "taskpool.demo": ("taskpool.ops.demo",),
    "taskpool.flower": ("taskpool.ops.flower",),
}


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        targets = MOVED[fullname]
        is_package = len(targets) == 1 and hasattr(importlib.import_module(targets[0]), "__path__")
        return importlib.util.spec_from_loader(fullname, self, is_package=is_package)

    def exec_module(self, module: types.ModuleType) -> None:
        targets = MOVED[module.__name__]
        if len(targets) == 1:
            # The import system returns what sys.modules holds after exec_module: the real module.
            sys.modules[module.__name__] = importlib.import_module(targets[0])
            return

        def __getattr__(name: str) -> Any:
            for target in targets:
                real = importlib.import_module(target)
                if hasattr(real, name):
                    return getattr(real, name)
            raise AttributeError(
                f"module {module.__name__!r} (moved to {', '.join(targets)}) has no {name!r}"
            )

        module.__getattr__ = __getattr__  # type: ignore[method-assign]
        module.__doc__ = f"Moved to {', '.join(targets)}."

    def get_code(self, fullname: str) -> Any:
        """``python -m <old path>`` runs the module's new home.

        An old path whose new home is a package (``taskpool.cli`` -> ``taskpool.ops.cli``) never
        comes here: its spec is a package's, so runpy runs ``<old path>.__main__``, which the
        import system finds through the new package's ``__path__`` (``taskpool/ops/cli/__main__.py``).
        """
        spec = importlib.util.find_spec(MOVED[fullname][0])
        if spec is None or not isinstance(spec.loader, importlib.abc.InspectLoader):
            return None
        return spec.loader.get_code(spec.name)


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
