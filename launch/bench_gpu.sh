#!/bin/bash
# The accelerator check of docs/performance.md, in one short script (issue 10):
#   bash launch/bench_gpu.sh [OUT_DIR]
# 1. where the paper-shaped bf16 step's device time goes (`python -m avemo.bench profile`:
#    XLA ops joined with their HLO -- which convolution pass, which fusion);
# 2. `python -m avemo.bench train` for the paper-shaped model in bf16 at an accelerator batch
#    (48 windows x 25 steps = 1,200 face frames of 224x224x3): step with a pre-made batch and
#    with the real Grain pipeline, FLOP/s and the share of the bf16 matmul peak measured in the
#    same process;
# 3. the same model in PyTorch eager on the same GPU (channels-last, bf16 autocast) when this
#    Python has torch: what a PyTorch user gets there.
# Each part has its own time limit, so one that fails or hangs does not take the others with it.
# All parts share one JAX compilation cache: the step compiled by part 1 is reused by part 2.
# Environment: PYTHON (default python3), BENCH_ROUNDS (3), BENCH_STEPS (5), BENCH_BATCH (48x25),
# BENCH_SET (extra --set KEY=VALUE items for parts 1 and 2, space-separated).
set -u -o pipefail
out=${1:-bench_gpu_out}
mkdir -p "$out"
py=${PYTHON:-python3}
rounds=${BENCH_ROUNDS:-3}
steps=${BENCH_STEPS:-5}
shape=${BENCH_BATCH:-48x25}
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/avemo-jax-cache}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1
  "$py" -c "import jax, flax, optax, grain; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee "$out/env.txt"

threads=$(($(nproc) > 4 ? $(nproc) - 4 : 2))
sets=(--set "train.pipeline_threads=$threads" --set train.prefetch_batches=16)
for item in ${BENCH_SET:-}; do sets+=(--set "$item"); done

part() {  # name limit command...
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" | tee "$out/$name.txt"
  timeout "$limit" "$@" 2>&1 | grep -v -e '^W[0-9]' -e '^I[0-9]' | tee -a "$out/$name.txt"
  echo "rc ${PIPESTATUS[0]}" | tee -a "$out/$name.txt"
}

part profile 150 "$py" -m avemo.bench profile --models paper --variant bf16 --batch "$shape" \
  --steps 3 --top 30 --out "$out/trace" "${sets[@]}"
rm -rf "$out/trace/plugins"  # the raw trace: too large to bring back; the HLO text stays
part train 180 "$py" -m avemo.bench train --models paper --variants bf16 --batch "$shape" \
  --steps "$steps" --rounds "$rounds" "${sets[@]}"
if "$py" -c "import torch" 2>/dev/null; then
  spec=$("$py" -c "
import json, sys; sys.path.insert(0, '.')
from avemo.bench import train
print(json.dumps(train.torch_spec(train._variant_config('paper', '$shape'))))" | tail -1)
  part torch 90 "$py" avemo/bench/torch_reference.py --spec "$spec" --device cuda --bf16 \
    --steps "$steps" --rounds "$rounds"
fi
