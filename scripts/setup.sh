#!/usr/bin/env bash
# Create .venv and install vmr with every extra, keeping torch/torchvision pinned (constraints.txt).
# Safe to re-run: an existing .venv is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q -c constraints.txt)
# torch first, from the pins: an unpinned resolve could pull a multi-GB build from the network.
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
"${PIP[@]}" -e ".[all]"
