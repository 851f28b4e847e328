#!/bin/bash
# The accelerator check of docs/performance.md, in one short script (issue 10):
#   bash launch/bench_gpu.sh [OUT_DIR]
# 1. where the paper-shaped bf16 step's device time goes (`python -m avemo.bench profile`: XLA
#    ops joined with their HLO and their flax layer -- which convolution pass, which fusion),
#    with XLA's command buffers (CUDA graphs) off so that each fusion is timed on its own;
# 2. `python -m avemo.bench train` for the paper-shaped model in bf16 at an accelerator batch
#    (48 windows x 25 steps = 1,200 face frames of 224x224x3): step with a pre-made batch and
#    with the real Grain pipeline, FLOP/s and the share of the bf16 matmul peak measured in the
#    same process; each BENCH_ALTS item (KEY=VALUE[,KEY=VALUE]) is timed beside it in the same
#    rounds;
# 3. with BENCH_TORCH=1, the same model in PyTorch eager on the same GPU (channels-last, bf16
#    autocast): what a PyTorch user gets there.
# Each part has its own time limit, so one that fails or hangs does not take the others with it.
# Environment: PYTHON (default python3), BENCH_ROUNDS (3), BENCH_STEPS (5), BENCH_BATCH (48x25),
# BENCH_SET (--set items for parts 1 and 2, space-separated), BENCH_ALTS, BENCH_TORCH.
set -u -o pipefail
out=${1:-bench_gpu_out}
mkdir -p "$out"
py=${PYTHON:-python3}
rounds=${BENCH_ROUNDS:-3}
steps=${BENCH_STEPS:-5}
shape=${BENCH_BATCH:-48x25}
export PYTHONUNBUFFERED=1

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

alts=()
for item in ${BENCH_ALTS:-}; do alts+=(--alt "$item"); done

XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" \
  part profile 120 "$py" -m avemo.bench profile --models paper --variant bf16 --batch "$shape" \
  --steps 3 --top 40 --out "$out/trace" "${sets[@]}"
rm -rf "$out/trace/plugins"  # the raw trace: too large to bring back; the HLO text stays
part train 330 "$py" -m avemo.bench train --models paper --variants bf16 --batch "$shape" \
  --steps "$steps" --rounds "$rounds" "${sets[@]}" "${alts[@]}"
if [ "${BENCH_TORCH:-0}" = 1 ] && "$py" -c "import torch" 2>/dev/null; then
  spec=$("$py" -c "
import json, sys; sys.path.insert(0, '.')
from avemo.bench import train
print(json.dumps(train.torch_spec(train._variant_config('paper', '$shape'))))" | tail -1)
  part torch 90 "$py" avemo/bench/torch_reference.py --spec "$spec" --device cuda --bf16 \
    --steps "$steps" --rounds "$rounds"
fi
