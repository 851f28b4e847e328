#!/bin/bash
# The accelerator benchmark of docs/performance.md, in one short script (issue 10):
#   bash launch/bench_gpu.sh [OUT_DIR]
# Runs `python -m avemo.bench train` for the paper-shaped model at an accelerator batch (48
# windows x 25 steps = 1,200 face frames of 224x224x3), at the paper's own batch (6 x 25) and the
# CPU default; each prints step times with a pre-made batch and with the real Grain pipeline,
# FLOP/s and the share of the f32 and bf16 matmul peaks measured in the same process. Each bench
# has its own time limit, so one that fails or hangs does not take the others with it.
# Environment: PYTHON (default python3), BENCH_ROUNDS (3), BENCH_STEPS (5).
set -u -o pipefail
out=${1:-bench_gpu_out}
mkdir -p "$out"
py=${PYTHON:-python3}
rounds=${BENCH_ROUNDS:-3}
steps=${BENCH_STEPS:-5}
export PYTHONUNBUFFERED=1

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$py" -c "import jax, flax, optax, grain; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee "$out/env.txt"

bench() {  # name limit args...
  local name=$1 limit=$2
  shift 2
  echo "== $name: $py -m avemo.bench train $*" | tee "$out/$name.txt"
  timeout "$limit" "$py" -m avemo.bench train --steps "$steps" --rounds "$rounds" "$@" 2>&1 \
    | grep -v -e '^W[0-9]' -e '^I[0-9]' | tee -a "$out/$name.txt"
  echo "rc ${PIPESTATUS[0]}" | tee -a "$out/$name.txt"
}

threads=$(($(nproc) > 4 ? $(nproc) - 4 : 2))
# Most important first, one variant per bench: on an H100 (2026-11-28) one paper-shaped variant
# took ~90 s warm (compilation, a FLOP count lowered on the CPU, timing); a fresh machine adds
# its start. With limits of 210/180/100 s only the first row of three benches finished.
bench paper48_bf16 240 --models paper --variants bf16 --batch 48x25 \
  --set "train.pipeline_threads=$threads" --set train.prefetch_batches=16
bench paper6_bf16 200 --models paper --variants bf16 --set "train.pipeline_threads=$threads"
bench default 240 --models default --variants e2e,frozen,bf16
bench paper6_f32 200 --models paper --variants e2e,frozen --set "train.pipeline_threads=$threads"
