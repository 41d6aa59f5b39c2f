#!/usr/bin/env bash
# The main job: set up, build the FaceNet ONNX from the installed package, run the reference audits.
# Extra arguments go to pytest, e.g.  bash scripts/audit.sh --model face.onnx --layer NAME
# Prints the install (setup + FaceNet build) and audit wall times separately at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
bash scripts/setup_env.sh
if [ -f scripts/build_facenet.py ]; then
  .venv/bin/python scripts/build_facenet.py --out models/facenet.onnx
fi
t1=$(date +%s)
status=0
.venv/bin/python -m pytest audits/ "$@" || status=$?
t2=$(date +%s)
echo "audit.sh: install $((t1 - t0))s, audit $((t2 - t1))s (pytest exit status $status)" >&2
exit $status
