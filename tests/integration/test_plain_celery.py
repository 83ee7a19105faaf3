"""A plain Celery app next to taskpool apps in one code base: gradual migration keeps working."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from tests.conftest import Worker


def test_plain_celery_worker_starts_and_runs_beside_taskpool_tasks(
    tp_app: Any, redis_url: str, tmp_path: Path
) -> None:
    plain = importlib.import_module("tests.apps.plain_app")
    # taskpool's tasks stay in their own app: the plain app has only its own (and Celery's).
    assert not [name for name in plain.app.tasks if name.startswith("tests.") and "plain_app" not in name]
    assert "tests.apps.app.where_gevent" in plain.TASKPOOL_APP.tasks
    for pool in ("prefork", "threads"):
        worker = Worker(
            "tests.apps.plain_app", pool, redis_url, tmp_path, concurrency=2, name=f"plain-{pool}",
            extra_args=("-Q", "plain.celery"),
        )  # fmt: skip
        worker.start(plain.app, timeout=60)
        try:
            assert plain.plain_add.delay(2, 3).get(timeout=30) == 5
        finally:
            worker.stop()
        assert "Unrecoverable error" not in worker.log(), worker.log()
