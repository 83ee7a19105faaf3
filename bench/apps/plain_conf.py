"""The plain Celery apps of the benches, configured like taskpool's defaults.

The settings are ``taskpool.settings.DEFAULTS`` written out, so the plain apps never import
taskpool. ``BENCH_CELERY_CONF`` (JSON, applied last) lets a bench pass the current DEFAULTS so
the two stay equal when taskpool's defaults change; ``BENCH_BROKER_TRANSPORT_OPTIONS`` gives
both sides the same transport options.
"""

from __future__ import annotations

import json
import os

from celery import Celery

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/1")


def plain_celery(name: str, queue: str) -> Celery:
    """A ``celery.Celery`` on ``BENCH_BROKER_URL`` with taskpool's defaults, consuming ``queue``."""
    transport = json.loads(os.environ.get("BENCH_BROKER_TRANSPORT_OPTIONS") or "{}")
    app = Celery(name)
    app.conf.update(
        broker_url=BROKER_URL,
        result_backend=BROKER_URL,  # taskpool: the backend follows the broker
        broker_transport_options={"visibility_timeout": 3600, **transport},  # taskpool sets 3600
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        result_extended=True,
        result_backend_always_retry=True,
        result_expires=86400,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=True,
        task_default_queue=queue,
    )
    app.conf.update(json.loads(os.environ.get("BENCH_CELERY_CONF") or "{}"))
    return app
