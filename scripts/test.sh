#!/usr/bin/env bash
# The README's test command: install into .venv, then run the default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
# one pytest worker per core (-n auto): most tests wait on a 1-thread subprocess; `-n 0` runs serially
pytest -n "${QVPO_TEST_WORKERS:-auto}" "$@"
