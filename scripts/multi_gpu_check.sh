#!/usr/bin/env bash
# The scaling-out tests on 2+ CUDA GPUs (NCCL): torchrun and accelerate launch (DDP),
# Trainer's FSDP2 path, fully_shard with a hand-written loop, and DeepSpeed ZeRO-3 where
# it is installed (pip install 'neft[deepspeed]'). Each run is compared with one process on
# the same global batch. On fewer than 2 GPUs the same tests run on CPU (gloo) instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
$PYTHON -c "import torch; n = torch.cuda.device_count(); assert n >= 2, f'{n} CUDA GPUs, need 2'; print(n, 'x', torch.cuda.get_device_name())"
$PYTHON -m pytest -q -rs tests/test_distributed.py
