"""Execution pools taskpool provides where Celery's own cannot do what taskpool needs.

``threads``: a thread pool that can grow and shrink, so the autoscaler can drive ``-P threads``
workers (Celery's has no ``grow`` and crashes the worker on the first scale-up).
"""

from __future__ import annotations

from taskpool.worker.pools.threads import TaskPool as ThreadsPool

__all__ = ["ThreadsPool"]
