#!/usr/bin/env bash
# The GPU check: the CUDA-marked tests, then benchmarks/gpu.py (samples/s, peak memory, host
# syncs per step, precisions, attention kernels, determinism's cost, a whole mosei-profile
# epoch). Under 8 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # logs and gpu.json in OUT_DIR (default $TMPDIR/selfmm-gpu-check)
#
# Needs: one CUDA GPU; bash with coreutils' timeout and tee; a Python 3.10+ ($PYTHON, default
# python3) with torch (a CUDA build), transformers, safetensors, numpy, scikit-learn, tqdm and
# pytest. Run from a checkout of this repository (selfmm is imported from src/, not installed);
# no network and no model download (the encoder is built from a config).
#
# Each part writes its results as it finishes: tests.log when the tests end, gpu.json after
# every measured variant (gpu.log as it goes), so a time-out keeps what was measured.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${TMPDIR:-/tmp}/selfmm-gpu-check}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# Read by cuBLAS when a process makes its first handle: deterministic kernels need it set first.
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
python=${PYTHON:-python3}

$python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU here'; print(torch.cuda.get_device_name(), torch.__version__)" || exit 2
timeout 150 $python -m pytest -m cuda tests/test_cuda.py -p no:randomly -o addopts="" -q -rs 2>&1 | tee "$out/tests.log"
tests=${PIPESTATUS[0]}
timeout 330 $python benchmarks/gpu.py --json "$out/gpu.json" --work "${TMPDIR:-/tmp}/selfmm-gpu" 2>&1 | tee "$out/gpu.log"
bench=${PIPESTATUS[0]}
echo "cuda tests exit $tests, benchmark exit $bench (124: timed out; gpu.json holds the variants measured)" | tee -a "$out/gpu.log"
exit $(( tests != 0 || bench != 0 ))
