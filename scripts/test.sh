#!/usr/bin/env bash
# The tests: set up, check lint, types and import contracts, then run the whole suite against
# real Redis and real workers (the suite starts its own redis-server on a free port).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
.venv/bin/ruff check taskpool workers tests bench
.venv/bin/ruff format --check taskpool workers tests bench
.venv/bin/mypy
.venv/bin/lint-imports --no-cache --no-logo  # the package layers: [tool.importlinter] in pyproject.toml
exec .venv/bin/pytest "$@"
