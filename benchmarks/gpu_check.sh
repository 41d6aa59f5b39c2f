#!/usr/bin/env bash
# GPU check for an H200-class machine (never run in CI, which has no GPU): proves the CUDA
# paths, times the probe protocol at CelebA scale and the rotated-MNIST study, prints one
# RESULT line. Budget: < 5 min (each step has its own time limit, so it cannot hang).
# Needs the project's .venv with a CUDA build of torch and onnxruntime-gpu
# (PYTHON=... to use another interpreter). Without a GPU it stops at once with exit
# status 2 and `RESULT gpu=none`.
# Usage: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=$PWD
start=$(date +%s)
fail() { echo "gpu_check: $1" >&2; echo "RESULT gpu=${2:-failed} total_s=$(( $(date +%s) - start ))"; exit "${3:-1}"; }

# 0. Is there a GPU at all? One clear line instead of a traceback.
$PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)' 2>/dev/null || {
  rc=$?
  [ "$rc" = 3 ] && fail "torch sees no CUDA device (CPU-only machine, or a CPU build of torch); nothing to check" none 2
  fail "cannot import torch with $PY (set PYTHON=... or run scripts/setup_env.sh)" none 2
}

# 1. CUDA paths: torch on CUDA, onnxruntime's CUDAExecutionProvider running the committed LeNet.
timeout 120 $PY - <<'PY' || fail "CUDA path check failed (above)"
import sys
import numpy as np, onnxruntime as ort, torch
x = torch.randn(4096, 4096, device="cuda"); torch.cuda.synchronize()
print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}: matmul ok {float((x @ x).norm()):.3e}")
if "CUDAExecutionProvider" not in ort.get_available_providers():
    sys.exit(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider ({ort.get_available_providers()}); "
             "pip install onnxruntime-gpu in place of onnxruntime")
s = ort.InferenceSession("audits/mnist_rotation/models/lenet.onnx", providers=["CUDAExecutionProvider"])
if s.get_providers()[0] != "CUDAExecutionProvider":
    sys.exit(f"the session fell back to {s.get_providers()} (CUDA/cuDNN libraries not found by onnxruntime)")
out = s.run(None, {s.get_inputs()[0].name: np.zeros((8, 1, 28, 28), np.float32)})
print(f"onnxruntime {ort.__version__}: CUDAExecutionProvider ran lenet.onnx -> {[o.shape for o in out]}")
PY

# 2. The probe protocol at CelebA scale: 162,770 x 832 features, 40 attributes x 5 C (no sklearn).
probe=$(timeout 150 $PY benchmarks/probe_fit.py --device cuda --sklearn-targets 0 | tee /dev/stderr | grep '^ours:') \
  || fail "probe protocol at CelebA scale failed or took over 150 s"
probe_s=$(echo "$probe" | sed -E 's/.*C selection ([0-9.]+)s.*/\1/')

# 3. The rotated-MNIST study of one model on CUDA: cold (extraction) and from cached embeddings.
rm -rf .cache/gpu-check
mnist=$(timeout 240 $PY benchmarks/mnist_study.py --models lenet --device cuda --workers 8 --cache-dir .cache/gpu-check \
        | tee /dev/stderr | grep '^RESULT') || fail "rotated-MNIST study on CUDA failed or took over 240 s"
cold=$(echo "$mnist" | sed -E 's/.*cold=([0-9.]+)s.*/\1/')
study=$(echo "$mnist" | sed -E 's/.*study=([0-9.]+)s.*/\1/')

echo "RESULT gpu=ok probe_celeba_scale_s=$probe_s mnist_lenet_cold_s=$cold mnist_lenet_study_s=$study total_s=$(( $(date +%s) - start ))"
