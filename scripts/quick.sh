#!/usr/bin/env bash
# The README's main command: install into .venv, then run the quick preset of the pipeline
# (all seven algorithms on small budgets; its table and figures land in results/quick/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
snakemake --cores "${CORES:-2}" --configfile config/quick.yaml "$@"
