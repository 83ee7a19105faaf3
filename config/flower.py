"""Flower settings for the stack: `celery -A workers flower --conf=config/flower.py`.

Credentials come from the environment, never from this file: set
FLOWER_BASIC_AUTH="user:password" (comma-separate several; passwords of 12 characters or
more, not the example's placeholder). Without them Flower refuses to start here, so the
dashboard, its API and /metrics are never open. /healthcheck answers "OK" to anyone.
"""

import os

from taskpool.ops.flower import check_basic_auth, protect_metrics

address = os.environ.get("FLOWER_ADDRESS", "127.0.0.1")
port = int(os.environ.get("FLOWER_PORT", "5555"))

try:
    basic_auth = check_basic_auth(os.environ.get("FLOWER_BASIC_AUTH", ""))
except ValueError as exc:
    raise SystemExit(f"config/flower.py: {exc}; Flower is not served without credentials") from None

# Flower serves /metrics without credentials; ask for the same ones as its pages.
protect_metrics()

# Keep the dashboard's memory bounded.
max_tasks = int(os.environ.get("FLOWER_MAX_TASKS", "10000"))
# Flower asks workers to send task events so it can show them, unless TASKPOOL_EVENTS=false
# (`taskpool up --no-events`): then it would turn them back on behind the user's back.
enable_events = os.environ.get("TASKPOOL_EVENTS", "true").strip().lower() not in ("false", "0", "no", "off")
