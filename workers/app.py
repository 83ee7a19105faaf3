"""The app: settings from config/celery.py and TASKPOOL_* variables."""

from taskpool import TaskPool

app = TaskPool("workers")
