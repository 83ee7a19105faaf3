"""Names shared by the worker's main process and the process that runs a task.

Request keys: entries the admission gate adds to Celery's ``request_dict``. Celery sends the
request dict to the pool with the job, and a task's ``self.request`` (Celery's ``Context``)
shows every entry as an attribute: ``self.request.taskpool_gpus``.
"""

from __future__ import annotations

#: ``[[semaphore, capacity, token], ...]``: the leases a pool process frees when the task
#: function returns (:func:`taskpool.runtime.leases.release_in_pool`).
LEASES_KEY = "taskpool_leases"
#: ``[slot, ...]``: the GPU slots leased for the task (:mod:`taskpool.runtime.gpu`).
GPUS_KEY = "taskpool_gpus"
