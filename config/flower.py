"""Flower settings for the stack: `celery -A workers flower --conf=config/flower.py`.

Credentials come from the environment, never from this file: set
FLOWER_BASIC_AUTH="user:password" (comma-separate several). Without it Flower refuses to
start here, so the dashboard and its API are never open.
"""

import os

address = os.environ.get("FLOWER_ADDRESS", "127.0.0.1")
port = int(os.environ.get("FLOWER_PORT", "5555"))

_auth = os.environ.get("FLOWER_BASIC_AUTH", "")
if not _auth:
    raise SystemExit("config/flower.py: set FLOWER_BASIC_AUTH=user:password; Flower is not served without it")
basic_auth = [pair for pair in _auth.split(",") if pair]

# Keep the dashboard's memory bounded.
max_tasks = int(os.environ.get("FLOWER_MAX_TASKS", "10000"))
# Flower asks workers to send task events so it can show them.
enable_events = True
