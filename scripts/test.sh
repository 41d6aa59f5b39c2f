#!/usr/bin/env bash
# The test command: set up, install Chromium for the browser test (best effort), run tests/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [ -f scripts/install_chromium.sh ]; then bash scripts/install_chromium.sh || true; fi
exec .venv/bin/python -m pytest tests/ -q -n 2 "$@"
