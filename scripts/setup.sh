#!/usr/bin/env bash
# Create .venv and install qvpo with its test extras. torch's CPU build goes in first:
# a bare torch requirement can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q "torch==${QVPO_TORCH:-2.13.0}"
.venv/bin/pip install -q -e '.[test]'
