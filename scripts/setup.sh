#!/usr/bin/env bash
# Create .venv and install qvpo with its test extras. torch goes in first, pinned: a bare torch
# requirement can pull a multi-GB CUDA build. Where pip reaches PyTorch's own index,
# QVPO_TORCH_INDEX=https://download.pytorch.org/whl/cpu takes its CPU build from there.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q ${QVPO_TORCH_INDEX:+--index-url "$QVPO_TORCH_INDEX"} "torch==${QVPO_TORCH:-2.13.0}"
.venv/bin/pip install -q -e '.[test]'
