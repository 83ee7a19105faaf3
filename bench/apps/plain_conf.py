"""The plain Celery apps of the benches, configured like taskpool's defaults.

The settings are ``taskpool.settings.DEFAULTS`` written out, so the plain apps never import
taskpool. ``BENCH_CELERY_CONF`` (JSON, applied last) lets a bench pass the current DEFAULTS so
the two stay equal when taskpool's defaults change; ``BENCH_BROKER_TRANSPORT_OPTIONS`` gives
both sides the same transport options.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlsplit

from celery import Celery


def broker_url() -> str:
    """``BENCH_BROKER_URL``, read when an app is built (not at import: a bench imports this module
    before it starts its own Redis). No default: a bench never talks to the machine's Redis."""
    url = os.environ.get("BENCH_BROKER_URL")
    if not url:
        raise RuntimeError("BENCH_BROKER_URL is not set: the benches start their own redis-server and set it")
    return url


def plain_celery(name: str, queue: str) -> Celery:
    """A ``celery.Celery`` on ``BENCH_BROKER_URL`` with taskpool's defaults, consuming ``queue``."""
    transport = json.loads(os.environ.get("BENCH_BROKER_TRANSPORT_OPTIONS") or "{}")
    url = broker_url()
    app = Celery(name)
    app.conf.update(
        broker_url=url,
        result_backend=url,  # taskpool: the backend follows the broker
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


#: kombu's Redis transport allows 10 connections per worker by default; with task_acks_late every
#: gevent greenlet acks on its own connection, so ``-P gevent -c 100`` fails acks
#: (MaxConnectionsError) and stalls. Benches that compare equal settings give both apps this pool.
TRANSPORT_OPTIONS = {"max_connections": 200}


def fairness(plain: Any, tp: Any, defaults: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The settings both apps share, and every difference found (empty when the comparison is fair)."""
    problems = [
        f"{key}: plain={plain.conf[key]!r} taskpool={tp.conf[key]!r}"
        for key in defaults
        if plain.conf[key] != tp.conf[key]
    ]
    if plain.conf.broker_transport_options != tp.conf.broker_transport_options:
        problems.append(
            f"broker_transport_options: plain={plain.conf.broker_transport_options} "
            f"taskpool={tp.conf.broker_transport_options}"
        )
    for key in ("broker_url", "result_backend"):
        a, b = urlsplit(str(plain.conf[key])), urlsplit(str(tp.conf[key]))
        if (a.scheme, a.netloc) != (b.scheme, b.netloc):
            problems.append(f"{key}: plain={plain.conf[key]} taskpool={tp.conf[key]} (not the same server)")
    shared = {key: tp.conf[key] for key in defaults}
    shared["broker_transport_options"] = dict(tp.conf.broker_transport_options)
    scheme = urlsplit(str(tp.conf.result_backend)).scheme
    shared["result_backend"] = f"{scheme}:// (the broker's Redis server, each app its own db)"
    return shared, problems
