#!/usr/bin/env bash
# The README's test command: install into .venv, then run the default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
pytest "$@"
