"""The apps of bench/batching_bench.py: one torch model, called per item and batched.

``BENCH_KIND`` picks the app a worker loads: ``plain`` (plain Celery, one input per task) or
``taskpool`` (the same task, plus the batched one). ``BENCH_MODEL`` picks the model:

* ``mlp`` (default): a 3072-4096-4096-10 MLP, 29 M multiply-adds and 117 MB of weights per
  call. One input at a time it is memory bound (every weight read for one vector), like most
  inference on a GPU, which is what batching amortises.
* ``cnn``: the example pipeline's tiny CNN (``workers/model.py``), about 0.1 M multiply-adds:
  Celery's own per-message cost dominates and batching has little to gain.

A task's input is an image id; the task makes the 3x32x32 image from it (seeded), so the
messages are small and the bench measures the model and the task machinery, not JSON.
"""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_process_init

_model: Any = None


def get_model() -> Any:
    """This process's model, built on first use (in each pool child at start)."""
    global _model
    if _model is None:
        import torch
        from torch import nn

        if os.environ.get("BENCH_MODEL", "mlp") == "cnn":
            from workers import model

            _model = model.build()
        else:
            torch.manual_seed(0)
            _model = nn.Sequential(
                nn.Flatten(),
                nn.Linear(3 * 32 * 32, 4096),
                nn.ReLU(),
                nn.Linear(4096, 4096),
                nn.ReLU(),
                nn.Linear(4096, 10),
            ).eval()
    return _model


def classify_many(image_ids: list[int]) -> list[int]:
    """One forward pass over the images of ``image_ids``; the predicted class of each."""
    import torch

    images = []
    for i in image_ids:
        generator = torch.Generator().manual_seed(int(i))
        images.append(torch.rand((3, 32, 32), generator=generator))
    with torch.no_grad():
        return [int(c) for c in get_model()(torch.stack(images)).argmax(dim=1)]


worker_process_init.connect(lambda **_: get_model(), weak=False)

if os.environ.get("BENCH_KIND", "taskpool") == "plain":
    from bench.apps.plain_conf import plain_celery

    app: Any = plain_celery("bench_batch_plain", "bench.batch.plain")

    @app.task
    def classify(image_id: int) -> int:
        return classify_many([image_id])[0]

else:
    from taskpool import Batch, TaskPool

    app = TaskPool("bench_batch_taskpool", config=False)

    @app.task(pool="prefork")
    def classify(image_id: int) -> int:
        return classify_many([image_id])[0]

    @app.task(pool="prefork", batch=Batch(max_size=32, wait_ms=10))
    def classify_batched(image_ids: list[int]) -> list[int]:
        return classify_many(image_ids)
