#!/usr/bin/env bash
# The core tests on a CUDA GPU, in fp32 and in bf16 (base weights in bf16, deltas fp32).
# Run whenever a GPU is at hand:  bash scripts/gpu_check.sh   (needs `make install` first,
# or any environment with neft and torch+CUDA). CI never needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
$PYTHON -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
for dtype in float32 bfloat16; do
  echo "== core tests on cuda, $dtype =="
  NEFT_TEST_DEVICE=cuda NEFT_TEST_DTYPE=$dtype $PYTHON -m pytest -q tests/test_core.py
done
