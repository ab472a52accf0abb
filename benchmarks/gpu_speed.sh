#!/usr/bin/env bash
# neft bench on one CUDA GPU, in one go (at most 8 minutes): random-initialised Llama
# shapes in bf16, about 1B (Llama-3.2-1B) and, where the GPU has >= 70 GiB, 7B (Llama-2-7B);
# every mode in its own process (then, when time is left, floor, neft and LoRA on 1B under
# torch.compile); step time, tokens/s, peak allocated and reserved memory, ratios to floor
# and to LoRA. Tables on stdout, <name>.json/.md/.png in OUTPUT_DIR.
#   bash benchmarks/gpu_speed.sh OUTPUT_DIR           # on the GPU machine
#   bash benchmarks/gpu_speed.sh OUTPUT_DIR --tiny    # the same steps, tiny shapes, on CPU
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${1:?usage: bash benchmarks/gpu_speed.sh OUTPUT_DIR [--tiny]}
start=$SECONDS
status=0
bench() { $PYTHON benchmarks/speed.py --output_dir "$OUT" --sweep "" "$@" || status=1; }

if [ "${2:-}" = "--tiny" ]; then
  tiny=(--device cpu --dtype bfloat16 --model tiny-random --per_device_train_batch_size 2
        --max_length 64 --steps 2 --warmup_steps 1)
  bench "${tiny[@]}" --budgets lora-r8,paper-6 --name gpu_tiny_a --time_budget 200
  bench "${tiny[@]}" --budgets lora-r8 --name gpu_tiny_b --time_budget 150
else
  $PYTHON -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 2
  gib=$($PYTHON -c "import torch; p = torch.cuda.get_device_properties(0); \
print(p.total_memory // 2**30)")
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  bench --device cuda --dtype bfloat16 --model llama-1b-random --per_device_train_batch_size 8 \
        --max_length 2048 --steps 5 --warmup_steps 2 --budgets lora-r8,paper-6 \
        --name speed_cuda_llama-1b --time_budget 230
  if [ "$gib" -ge 70 ]; then
    bench --device cuda --dtype bfloat16 --model llama2-7b-random --per_device_train_batch_size 4 \
          --max_length 1024 --steps 4 --warmup_steps 2 --budgets lora-r8 \
          --name speed_cuda_llama2-7b --time_budget $((465 - (SECONDS - start)))
  else
    echo "skipping the 7B shapes: $gib GiB of GPU memory"
  fi
  # torch.compile'd (compile time falls in the warm-up): does neft keep its lead over LoRA?
  left=$((520 - (SECONDS - start)))
  if [ "$left" -ge 90 ]; then
    bench --device cuda --dtype bfloat16 --model llama-1b-random --per_device_train_batch_size 8 \
          --max_length 2048 --steps 4 --warmup_steps 3 --budgets lora-r8 --modes floor,neft,lora \
          --torch_compile true --name speed_cuda_llama-1b_compiled --time_budget "$left"
  else
    echo "skipping the compiled 1B run: $left s left"
  fi
fi
echo "gpu_speed.sh: $((SECONDS - start)) s in all; results in $OUT"
exit $status
