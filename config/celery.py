"""Celery settings the stack's app loads (``TASKPOOL_CONFIG``, default ``config.celery``).

taskpool's own defaults apply first, then this file, then environment variables:
every setting here can be overridden as ``TASKPOOL_<SETTING>`` (for example
``TASKPOOL_WORKER_PREFETCH_MULTIPLIER=4``); see the README's configuration reference.
"""

# Broker and results: one Redis. TASKPOOL_BROKER_URL / TASKPOOL_RESULT_BACKEND override.
broker_url = "redis://127.0.0.1:6379/0"
result_backend = None  # None: the broker's Redis

# JSON only: pickle is never accepted (taskpool refuses a config that allows it).
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# At-least-once delivery: ack after the task ran, requeue the task of a killed child.
# Tasks must be idempotent (see the README).
task_acks_late = True
task_reject_on_worker_lost = True

# Seconds before Redis hands an unacked message to another worker (TASKPOOL_VISIBILITY_TIMEOUT).
# Retry waits are kept below it. Longer than your longest task, or it runs twice.
visibility_timeout = 3600.0

# Prefetch: taskpool chooses the multiplier per pool (prefork and threads 1, gevent 2; the
# README's "Prefetch" says why). Set worker_prefetch_multiplier here only to override that.

# Results: kept a day, with task name, args, worker and retries (AsyncResult.retries).
result_expires = 86400
result_extended = True

# Tasks of any pool that do not name one.
default_pool = "prefork"
