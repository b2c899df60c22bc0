#!/usr/bin/env bash
# Lints, renders and validates helm/stampede offline: a virtualenv under target/ (made once,
# reused), the pinned requirements from PyPI, then check_chart.py. Exits non-zero on any failure.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${CHART_VENV:-${CARGO_TARGET_DIR:-$ROOT/target}/chart-venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/helm/tests/requirements.txt"
exec "$VENV/bin/python" "$ROOT/helm/tests/check_chart.py" "$@"
