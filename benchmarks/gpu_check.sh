#!/usr/bin/env bash
# GPU check for an H200-class machine (never run in CI, which has no GPU): proves the CUDA
# paths, times the probe protocol at CelebA scale and the rotated-MNIST study, prints one
# RESULT line. Budget: < 5 min. Needs the project's .venv with a CUDA build of torch and
# onnxruntime-gpu (PYTHON=... to use another interpreter).
# Usage: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=$PWD
start=$(date +%s)

# 1. CUDA paths: torch on CUDA, onnxruntime's CUDAExecutionProvider running a LeNet.
$PY - <<'PY'
import numpy as np, onnxruntime as ort, torch
assert torch.cuda.is_available(), "torch sees no CUDA device"
x = torch.randn(4096, 4096, device="cuda"); torch.cuda.synchronize()
print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}: matmul ok {float((x @ x).norm()):.3e}")
assert "CUDAExecutionProvider" in ort.get_available_providers(), ort.get_available_providers()
s = ort.InferenceSession("audits/mnist_rotation/models/lenet.onnx", providers=["CUDAExecutionProvider"])
assert s.get_providers()[0] == "CUDAExecutionProvider", s.get_providers()
out = s.run(None, {s.get_inputs()[0].name: np.zeros((8, 1, 28, 28), np.float32)})
print(f"onnxruntime {ort.__version__}: CUDAExecutionProvider ran lenet.onnx -> {[o.shape for o in out]}")
PY

# 2. The probe protocol at CelebA scale: 162,770 x 832 features, 40 attributes x 5 C (no sklearn).
probe=$($PY benchmarks/probe_fit.py --device cuda --sklearn-targets 0 | tee /dev/stderr | grep '^ours:')
probe_s=$(echo "$probe" | sed -E 's/.*C selection ([0-9.]+)s.*/\1/')

# 3. The rotated-MNIST study of one model on CUDA: cold (extraction) and from cached embeddings.
mnist=$($PY benchmarks/mnist_study.py --models lenet --device cuda --cache-dir .cache/gpu-check | tee /dev/stderr | grep '^RESULT')
cold=$(echo "$mnist" | sed -E 's/.*cold=([0-9.]+)s.*/\1/')
study=$(echo "$mnist" | sed -E 's/.*study=([0-9.]+)s.*/\1/')

echo "RESULT gpu=ok probe_celeba_scale_s=$probe_s mnist_lenet_cold_s=$cold mnist_lenet_study_s=$study total_s=$(( $(date +%s) - start ))"
