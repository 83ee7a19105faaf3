"""The example pipeline: download (gevent, async) -> run_model (prefork, torch) -> save (threads).

(download.s(1) | run_model.s() | save.s()).delay()
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

from celery import chain
from celery.signals import worker_process_init

from taskpool import Batch

from . import model
from .app import app

IMAGE_SHAPE = (3, 32, 32)
worker_process_init.connect(model.load_in_child, weak=False)


class TransientDownloadError(ConnectionError):
    """A download that may work when tried again."""


@app.task(pool="gevent", retries=3, backoff=0.5, backoff_max=5.0, retry_on=(TransientDownloadError,))
async def download(image_id: int) -> dict[str, Any]:
    """Fetch an image (simulated: deterministic pixels after an I/O wait)."""
    if not isinstance(image_id, int) or image_id < 0:
        raise ValueError(f"download: image_id must be an integer >= 0, got {image_id!r}")
    await asyncio.sleep(0.01 + random.random() * 0.02)
    attempt = download.request.retries or 0
    if attempt < download.taskpool.retries and _fails(image_id, attempt):
        raise TransientDownloadError(f"image {image_id}: connection reset (attempt {attempt + 1})")
    rng = random.Random(_digest(image_id))
    pixels = [round(rng.random(), 4) for _ in range(IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2])]
    return {"image_id": image_id, "shape": list(IMAGE_SHAPE), "pixels": pixels}


def _digest(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "big")


def _fails(image_id: int, attempt: int) -> bool:
    """The simulated outage: a TASKPOOL_DEMO_FAILURE_RATE share of attempts fail, chosen by
    hashing (image, attempt) so a run can be repeated. Failures are transient: the last
    attempt the retry policy allows always succeeds, so the demo ends with no dead letters."""
    rate = float(os.environ.get("TASKPOOL_DEMO_FAILURE_RATE", "0"))
    return _digest(image_id, attempt) < rate * 2**32


@app.task(pool="prefork", batch=Batch(max_size=16, wait_ms=20))
def run_model(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Classify images with the small torch model, a batch at a time (callers send one image)."""
    import torch

    x = torch.stack([torch.tensor(i["pixels"], dtype=torch.float32).reshape(*i["shape"]) for i in items])
    with torch.no_grad():
        probs = torch.softmax(model.get()(x), dim=1)
    scores, labels = torch.max(probs, dim=1)
    return [
        {"image_id": i["image_id"], "label": int(label), "score": round(float(score), 6)}
        for i, label, score in zip(items, labels, scores, strict=True)
    ]


@app.task(pool="threads")
def save(result: dict[str, Any]) -> str:
    """Write one prediction as JSON under TASKPOOL_OUTPUT_DIR (default .taskpool/output)."""
    out = Path(os.environ.get("TASKPOOL_OUTPUT_DIR", ".taskpool/output"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result['image_id']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)  # a re-run (at-least-once) rewrites the same file: idempotent
    return str(path)


def pipeline(image_id: int) -> chain:
    """The three steps for one image, each on its own pool's workers."""
    return download.s(image_id) | run_model.s() | save.s()
