#!/usr/bin/env bash
# The demo: set up, then run the example pipeline (download -> run_model -> save) on a
# local stack: an embedded Redis under .taskpool/ unless TASKPOOL_BROKER_URL is set, and
# one worker per pool. Extra arguments go to `taskpool demo` (try --items 20 or -v).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/taskpool demo --items 300 "$@"
