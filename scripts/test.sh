#!/usr/bin/env bash
# Every check of the project: lint, format, types and the test suite.
# Installs what it needs into .venv (made on first use); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy --strict kling_async
.venv/bin/python -m pytest "$@"
