"""An app with a GPU task, for `taskpool up`'s GPU worker (tests/integration/test_stack_gpu.py)."""

from __future__ import annotations

from typing import Any

from taskpool import TaskPool, current_gpus

app = TaskPool("stack_gpu", config=False)


@app.task(pool="prefork", gpu_slots=1, bind=True)
def on_gpu(self: Any) -> dict[str, Any]:
    return {"gpus": current_gpus(), "worker": self.request.hostname}


@app.task(pool="threads", bind=True)
def on_threads(self: Any) -> dict[str, Any]:
    return {"worker": self.request.hostname}
