#!/usr/bin/env bash
# The device checks of this project, as one short script for a lent GPU (about 10 minutes).
#
#   run (device tool):  bash scripts/gpu_check.sh
#
# 1. the CUDA tests that skip on a CPU (fused Sinkhorn kernels, CUDA-graph backend, dtype and
#    device paths), 2. the solver and loss benchmarks on the GPU (written under $OUT, to be
#    committed to results/benchmarks/ with their provenance). The chapters' `full` recordings
#    take hours and do not fit the 15 device-minutes a session gets.
# Everything it writes goes to $OUT (the device tool brings it back); nothing else changes.
set -euo pipefail
OUT="${OUT:-$(mktemp -d)}"
PY=.venv/bin/python
[ -x "$PY" ] || PY=python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
timeout 240 "$PY" -m pytest -q tests/ot/test_cuda_path.py -rs 2>&1 | tee "$OUT/pytest_cuda.txt"
timeout 150 "$PY" benchmarks/bench_ot.py --device cuda --repeat 3 --out "$OUT" 2>&1 | tee "$OUT/bench_ot.txt"
timeout 120 "$PY" benchmarks/bench_loss.py --device cuda --repeat 3 --out "$OUT" 2>&1 | tee "$OUT/bench_loss.txt"
echo "done: $(ls "$OUT")"
