"""The deployable taskpool app and its example pipeline.

``celery -A workers worker -P gevent`` (or ``threads``, ``prefork``) runs the tasks
declared for that pool; ``taskpool worker --pool gevent`` does the same with defaults.
"""

from .app import app
from .pipeline import download, pipeline, run_model, save

__all__ = ["app", "download", "pipeline", "run_model", "save"]
