"""A plain ``celery.Celery`` app in a code base that also has a taskpool app (gradual migration).

It imports the taskpool test apps, whose tasks declare limits, GPU slots and batches; its worker
must start and run its own tasks all the same.
"""

from __future__ import annotations

import os

from celery import Celery

import tests.apps.app
import tests.apps.batch_app
import tests.apps.limits_app

app = Celery("plain", broker=os.environ["TASKPOOL_BROKER_URL"], backend=os.environ["TASKPOOL_BROKER_URL"])
app.conf.task_default_queue = "plain.celery"

#: What the taskpool app of the same process looks like, to compare.
TASKPOOL_APP = tests.apps.app.app


@app.task
def plain_add(x: int, y: int) -> int:
    return x + y
