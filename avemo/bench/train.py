"""Train-step benchmark: step time, frames/s and achieved FLOP/s next to a measured matmul peak.

`python -m avemo.bench train [--models default,paper] [--steps N]`. FLOPs come from XLA's cost
analysis of the *lowered* (backend-independent) step -- on GPUs the compiled module hides cuDNN
convolutions in custom calls that the cost analysis does not count. XLA counts a scan/while body
once, so the LSTMs' FLOPs are added analytically (2 * 4H * (D + H) multiply-adds per step and
sample, x3 for forward + backward). The peak is an f32 matmul at default precision (TF32 on
NVIDIA GPUs), 2048^2 on CPUs and 8192^2 on accelerators.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def matmul_peak(n: int | None = None, repeats: int = 10) -> float:
    """FLOP/s of an n x n float32 matmul, the reference peak of this device."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = f(a)
    out.block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def _config(name: str):
    from configs import default, paper

    config = {"default": default, "paper": paper}[name].get_config()
    if name == "paper" and jax.default_backend() == "cpu":
        config.train.batch_size = 1  # a paper-shaped step on a CPU: one short window
        config.train.window_steps = 8
    return config


def _lstm_flops(config, feature_dim: int) -> float:
    m = config.model
    b, length = config.train.batch_size, config.train.window_steps
    layers = []
    if m.mode in ("fusion", "audio"):
        layers.append((m.audio_dense_features or feature_dim, m.lstm_features))
    if m.mode == "video":
        layers.append((m.audio_dense_features or m.alexnet.conv_features[-1], m.lstm_features))
    if m.output_lstm_features:
        layers.append((m.lstm_features, m.output_lstm_features))
    per_step = sum(2 * 4 * h * (d + h) for d, h in layers)
    return 3.0 * per_step * b * length


def _program_flops(trainer, state, batch, name: str, b: int, length: int) -> float:
    """XLA's FLOP count of the train step; where this backend gives none (jax 0.11 on CUDA),
    the identical program's count from XLA CPU in a subprocess (FLOPs do not depend on the
    device)."""
    cost = trainer.train_step.lower(state, batch, trainer.base_rng).cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    if cost and cost.get("flops"):
        return float(cost["flops"])
    import json
    import os
    import subprocess

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "avemo.bench",
            "train",
            "--models",
            name,
            "--flops-only",
            "--batch",
            f"{b}x{length}",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["flops"])


def bench_model(name: str, steps: int, batch_shape: str = "", flops_only: bool = False) -> dict:
    from avemo import train

    config = _config(name)
    if batch_shape:
        config.train.batch_size, config.train.window_steps = map(int, batch_shape.split("x"))
    b, length = config.train.batch_size, config.train.window_steps
    size, channels = config.video.crop_size, 1 if config.video.color_mode == "gray" else 3
    feature_dim = 93
    rng = np.random.default_rng(0)
    batch = {
        "faces": rng.integers(0, 255, (b, length, size, size, channels), dtype=np.uint8),
        "face_present": np.ones((b, length), np.float32),
        "audio_features": rng.standard_normal((b, length, feature_dim)).astype(np.float32),
        "speech_energy": np.ones((b, length), np.float32),
        "labels": np.zeros((b, length, 2), np.float32),
        "mask": np.ones((b, length), np.float32),
    }
    if config.model.audio_cnn.enabled:
        from avemo.audio import spectrogram

        pt, pf = spectrogram.patch_shape(config.audio)
        batch["spectrogram"] = rng.standard_normal((b, length, pt, pf)).astype(np.float32)
    trainer = train.Trainer(config, batch, steps + 1)
    state = trainer.init_state()
    params = sum(x.size for x in jax.tree.leaves(state.params))
    global_batch = trainer.to_global(batch)
    if flops_only:
        cost = trainer.train_step.lower(state, global_batch, trainer.base_rng).cost_analysis()
        return {"flops": float((cost[0] if isinstance(cost, list | tuple) else cost)["flops"])}
    flops = _program_flops(trainer, state, global_batch, name, b, length)
    flops += _lstm_flops(config, feature_dim) * (length - 1) / length
    state, metrics = trainer.train_step(state, global_batch, trainer.base_rng)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = trainer.train_step(state, global_batch, trainer.base_rng)
    jax.block_until_ready(metrics)
    step_time = (time.perf_counter() - start) / steps
    return {
        "model": name,
        "params": params,
        "batch": f"{b}x{length}",
        "crop": size,
        "frame_stride": config.model.video_frame_stride,
        "step_s": step_time,
        "frames_per_s": b * length / step_time,
        "flops_per_step": flops,
        "flops_per_s": flops / step_time,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m avemo.bench train")
    parser.add_argument("--models", default="default,paper")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--flops-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", default="", help="windows x steps, e.g. 8x150")
    args = parser.parse_args(argv)
    sys.path.insert(0, ".")
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv[:1])
    if args.flops_only:
        import json

        print(json.dumps(bench_model(args.models, 0, args.batch, flops_only=True)))
        return
    peak = matmul_peak()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})")
    print(f"matmul peak (f32, default precision): {peak / 1e9:.1f} GFLOP/s")
    print(
        "| model | params | batch (windows x steps) | crop | frame stride | step (s) | "
        "label frames/s | GFLOP/step | GFLOP/s | % of matmul peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        r = bench_model(name, args.steps, args.batch)
        print(
            f"| {r['model']} | {r['params']:,} | {r['batch']} | {r['crop']} | "
            f"{r['frame_stride']} | {r['step_s']:.4f} | {r['frames_per_s']:.0f} | "
            f"{r['flops_per_step'] / 1e9:.2f} | {r['flops_per_s'] / 1e9:.1f} | "
            f"{100 * r['flops_per_s'] / peak:.0f}% |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
