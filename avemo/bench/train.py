"""Train-step benchmark: step time, frames/s and achieved FLOP/s next to a measured matmul peak.

`python -m avemo.bench train [--models default,paper] [--steps N] [--rounds R] [--torch PY]`.

Per model it times, in one process and in alternating rounds (the machine may be shared):
  * end-to-end: the train step on a pre-made batch and with the real Grain pipeline (windows cut
    from prepared-shaped sessions held like the preparation cache's arrays, uint8 faces);
  * frozen: the two-stage path (`model.freeze_video` + cached feature maps, Sec. 6.4);
  * frozen_stream: the whole face stream of a video-only first stage kept fixed
    (`model.freeze_face_stream`): its states per training window come with the batch;
  * bf16: `model.dtype="bfloat16"` (accelerators only; XLA CPU has no fast bf16 matmul);
  * torch: the same model in PyTorch eager (`avemo/bench/torch_reference.py`) when a Python with
    torch is given (`--torch PY`, $AVEMO_TORCH_PYTHON, or this interpreter if it imports torch),
    run as a subprocess whose rounds alternate with ours. torch is not a dependency of avemo.
FLOPs come from XLA's cost analysis of the *lowered* (backend-independent) step -- on GPUs the
compiled module hides cuDNN convolutions in custom calls that the cost analysis does not count.
XLA counts a scan/while body once, so the LSTMs' FLOPs are added analytically (2 * 4H * (D + H)
multiply-adds per step and sample, x3 for forward + backward). The peak is an f32 matmul at
default precision (TF32 on NVIDIA GPUs), 2048^2 on CPUs and 8192^2 on accelerators, measured in
the same run.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def matmul_peak(n: int | None = None, repeats: int = 10, dtype=jnp.float32) -> float:
    """FLOP/s of an n x n matmul in `dtype` (default precision), the reference peak."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
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
    """FLOPs of the LSTMs' scanned matmuls over all steps (XLA's cost analysis counts a while
    loop's body once; the caller adds the other L - 1 steps)."""
    m = config.model
    b, length = config.train.batch_size, config.train.window_steps
    layers = []
    if m.mode in ("fusion", "audio"):
        layers.append((m.audio_dense_features or feature_dim, m.lstm_features))
    if m.mode == "video":
        layers.append((m.audio_dense_features or m.alexnet.conv_features[-1], m.lstm_features))
    # (a frozen face stream's states come with the batch: its two LSTMs do not run)
    stream = m.mode == "fusion" and not m.freeze_face_stream
    if stream and m.video_lstm_features:  # the face LSTM over the pooled map
        layers.append((m.alexnet.conv_features[-1], m.video_lstm_features))
    if stream and m.face_context_lstm:
        layers.append((m.lstm_features, m.lstm_features))
    if m.output_lstm_features:
        layers.append((m.lstm_features, m.output_lstm_features))
    if m.lstm_impl in ("fused", "native"):  # only the recurrent matmul and its backward loop
        per_step = sum(2 * (2 * 4 * h * h) for _, h in layers)
    else:  # flax: input and recurrent matmuls, forward and backward (x3), all in the loops
        per_step = sum(3 * (2 * 4 * h * (d + h)) for d, h in layers)
    return float(per_step * b * length)


def _program_flops(
    trainer, state, batch, name: str, b: int, length: int, overrides: dict | None = None
) -> float:
    """XLA's FLOP count of the train step; where this backend gives none (jax 0.11 on CUDA),
    the identical program's count from XLA CPU in a subprocess (FLOPs do not depend on the
    device)."""
    flops = _xla_flops(trainer, state, batch)
    if flops:
        return flops
    import json
    import os
    import subprocess

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    shapes = {k: [list(v.shape), str(v.dtype)] for k, v in batch.items()}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "avemo.bench",
            "train",
            "--models",
            name,
            "--flops-only",
            json.dumps(shapes),
            "--batch",
            f"{b}x{length}",
            *[f"--set={k}={v!r}" for k, v in (overrides or {}).items()],
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["flops"])


def lowered_flops(
    name: str, shapes: dict, batch_shape: str = "", overrides: dict | None = None
) -> float:
    """XLA's FLOP count of `name`'s train step lowered for this backend on a batch of `shapes`
    ({key: [shape, dtype]}); nothing is run (the paper's step at accelerator batch sizes would
    take minutes on a CPU)."""
    from avemo import train

    config = _variant_config(name, batch_shape, overrides)
    example = {k: np.zeros([1, *shape[1:]], dtype) for k, (shape, dtype) in shapes.items()}
    trainer = train.Trainer(config, example, 10_000)
    # Shapes only: nothing is initialised or transferred (the paper model's 327 M parameters
    # would take minutes to initialise on a CPU).
    batch = {
        k: jax.ShapeDtypeStruct(shape, dtype, sharding=trainer.batch_sharding)
        for k, (shape, dtype) in shapes.items()
    }
    return _xla_flops(trainer, trainer.abstract_state, batch)


def _xla_flops(trainer, state, batch) -> float | None:
    """XLA's cost analysis of the lowered train step: its FLOPs, or None where the backend
    gives none."""
    cost = trainer.train_step.lower(state, batch, trainer.base_rng).cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"]) if cost and cost.get("flops") else None


def _batch(config, rng: np.random.Generator, feature_dim: int = 93) -> dict[str, np.ndarray]:
    b, length = config.train.batch_size, config.train.window_steps
    size, channels = config.video.crop_size, 1 if config.video.color_mode == "gray" else 3
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
    return batch


# The faces of the embedded corpus's training split, at most (bytes), that the bench holds.
CORPUS_SHAPED_FACES_BYTES = 256 << 20


def bench_sessions(config, num_sessions: int = 0, feature_dim: int = 93) -> list:
    """Prepared-shaped sessions (uint8 faces, z-normalised features, labels, log-mel) in memory,
    as `avemo.data.prepare` hands them to the pipeline; random content (timing only).

    `num_sessions = 0`: the training split of the embedded corpus the config names (sessions and
    their length, hence the number of windows the pipeline shuffles: Grain's `index_shuffle`
    costs ~22 ms / n per index for n windows, so a small set overstates the real pipeline's
    cost -- 57 windows: ~3 ms a batch of 8; the default corpus's 330: ~0.5 ms) when its faces
    fit `CORPUS_SHAPED_FACES_BYTES`; otherwise (the paper's 224 x 224 RGB faces) 3 sessions of
    max(4 windows, 200) steps.
    """
    from avemo.data.pipeline import PreparedSession

    rng = np.random.default_rng(1)
    size, channels = config.video.crop_size, 1 if config.video.color_mode == "gray" else 3
    corpus = config.data.synthetic
    corpus_steps = int(round(corpus.seconds / config.data.step_seconds))
    corpus_bytes = corpus.train_sessions * corpus_steps * size * size * channels
    if not num_sessions and corpus_bytes <= CORPUS_SHAPED_FACES_BYTES:
        num_sessions, steps = corpus.train_sessions, corpus_steps
    else:
        num_sessions, steps = num_sessions or 3, max(4 * config.train.window_steps, 200)
    sessions = []
    for i in range(num_sessions):
        arrays = {
            "faces": rng.integers(0, 255, (steps, size, size, channels), dtype=np.uint8),
            "face_present": np.ones(steps, np.float32),
            "audio_features": rng.standard_normal((steps, feature_dim)).astype(np.float32),
            "speech_energy": rng.random(steps).astype(np.float32),
            "labels": rng.uniform(-1, 1, (steps, 2)).astype(np.float32),
        }
        if config.model.audio_cnn.enabled:
            from avemo.audio import spectrogram

            _, pf = spectrogram.patch_shape(config.audio)
            columns = int(steps * config.data.step_seconds / config.audio.hop_seconds) + 1
            arrays["logmel"] = rng.standard_normal((columns, pf)).astype(np.float32)
        sessions.append(PreparedSession(f"bench_{i}", "train", arrays))
    return sessions


class _Runner:
    """One train step of `config`: pre-made batch and real-pipeline timings, FLOPs."""

    def __init__(
        self,
        config,
        name: str,
        batch: dict,
        sessions: list,
        steps: int,
        overrides: dict | None = None,
        min_round_seconds: float = 0.0,
    ):
        from avemo import train
        from avemo.data import augment, frozen, pipeline

        self.config, self.name, self.steps, self.overrides = config, name, steps, overrides
        self.label = name  # as printed (a model variant with --alt overrides names them)
        self.trainer = train.Trainer(config, batch, 10_000)
        self.state = self.trainer.init_state()
        face_stream = None
        if frozen.enabled(config):
            branch = frozen.initial_branch_variables(config, self.trainer)
            sessions = frozen.attach(sessions, config, branch)
            maps = sessions[0].arrays[frozen.FEATURES_KEY]
            b, length = batch["mask"].shape
            batch = {k: v for k, v in batch.items() if k != "faces"}
            # every s-th step's maps, as the pipeline cuts them for training
            held = np.asarray(maps[: length : config.model.video_frame_stride])
            batch[frozen.FEATURES_KEY] = np.broadcast_to(held, (b,) + held.shape).copy()
        if config.model.freeze_face_stream:  # the stream's states instead of its inputs
            from avemo.models.bimodal import FACE_STREAM_KEYS

            variables = train.model_variables(self.state)
            out = jax.jit(lambda v, b: self.trainer.model.apply(v, b, train=False))(
                variables, batch
            )
            batch = {k: v for k, v in batch.items() if k not in ("faces", frozen.FEATURES_KEY)}
            batch.update({k: np.asarray(out[k]) for k in FACE_STREAM_KEYS})
            face_stream = frozen.stream_windows(self.trainer.model, variables)
        elif "faces" in batch and config.model.video_frame_stride > 1:
            # every s-th step's crops, as the pipeline cuts training windows (`pipeline._cut`)
            batch = {**batch, "faces": batch["faces"][:, :: config.model.video_frame_stride]}
        self.batch = self.trainer.to_global(batch)
        # Modality dropout's silent window: zeros (the training mean) do for timing.
        silence = augment.silent_window(
            config, None, int(sessions[0].arrays["audio_features"].shape[-1])
        )
        self.iterator = iter(
            pipeline.train_dataset(sessions, config, silence=silence, face_stream=face_stream)
        )
        if config.train.device_prefetch:  # as the training loop does it
            self.iterator = pipeline.DevicePrefetch(
                self.iterator, self.trainer.to_global, config.train.device_prefetch
            )
        self.state, m = self.trainer.train_step(self.state, self.batch, self.trainer.base_rng)
        self.state, m = self.trainer.train_step(self.state, self._next(), self.trainer.base_rng)
        jax.block_until_ready(m)
        if min_round_seconds > 0:  # a short step runs more steps per round (see main's help)
            start = time.perf_counter()
            self.state, m = self.trainer.train_step(self.state, self.batch, self.trainer.base_rng)
            jax.block_until_ready(m)
            once = max(time.perf_counter() - start, 1e-6)
            self.steps = max(steps, math.ceil(min_round_seconds / once))
        self.premade: list[float] = []
        self.real: list[float] = []

    def _next(self) -> dict:
        batch = next(self.iterator)
        return batch if self.config.train.device_prefetch else self.trainer.to_global(batch)

    def params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(self.state.params))

    def round(self) -> None:
        t = self.trainer
        start = time.perf_counter()
        for _ in range(self.steps):
            self.state, m = t.train_step(self.state, self.batch, t.base_rng)
        jax.block_until_ready(m)
        self.premade.append((time.perf_counter() - start) / self.steps)
        start = time.perf_counter()
        for _ in range(self.steps):  # as the training loop does it
            self.state, m = t.train_step(self.state, self._next(), t.base_rng)
        jax.block_until_ready(m)
        self.real.append((time.perf_counter() - start) / self.steps)

    def flops(self, feature_dim: int = 93) -> float:
        b, length = self.config.train.batch_size, self.config.train.window_steps
        m = self.config.model
        if jax.default_backend() == "cpu" and "native" in (
            m.lstm_impl,
            m.attention_impl,
            m.conv_pool_impl,
        ):
            # XLA's cost analysis counts the native kernels' custom calls as nothing: count the
            # same math as XLA's own ops (the fused scan, the literal attention scores)
            shapes = {k: [list(v.shape), str(v.dtype)] for k, v in self.batch.items()}
            xla_ops = {
                "model.lstm_impl": "fused",
                "model.attention_impl": "xla",
                "model.conv_pool_impl": "xla",
            }
            flops = lowered_flops(
                self.name, shapes, f"{b}x{length}", {**(self.overrides or {}), **xla_ops}
            )
        else:
            flops = _program_flops(
                self.trainer, self.state, self.batch, self.name, b, length, self.overrides
            )
        return flops + _lstm_flops(self.config, feature_dim) * (length - 1) / length


def _variant_config(name: str, batch_shape: str = "", overrides: dict | None = None):
    """`model[:variant]` with variant e2e (default), frozen, frozen_stream or bf16;
    `batch_shape` "BxL" and `overrides` ({flat key: value}, `--set`) change the model's config."""
    base, _, variant = name.partition(":")
    config = _config(base)
    if batch_shape:
        config.train.batch_size, config.train.window_steps = map(int, batch_shape.split("x"))
    if overrides:
        config.update_from_flattened_dict(overrides)
    if variant in ("frozen", "frozen_stream"):
        import tempfile

        config.data.cache_dir = tempfile.mkdtemp(prefix="avemo-bench-")
    if variant == "frozen":
        config.model.freeze_video = True
        config.train.face_stage_steps = 0  # a frozen stage-1 CNN instead of a face stage
        # as the README's stage 1 -> frozen recipe runs it: the face LSTM reads the pooled map
        config.model.face_lstm_dense_features = 0
    elif variant == "frozen_stream":  # the face stage's whole stream kept fixed
        if config.model.attention_query != "face":
            raise ValueError(f"{name}: its face stream reads the voice and cannot be kept fixed")
        config.model.freeze_face_stream = True
    elif variant == "bf16":
        config.model.dtype = "bfloat16"
    elif variant not in ("", "e2e", "frozen"):
        raise ValueError(f"unknown variant {variant!r} (e2e, frozen, frozen_stream, bf16)")
    return config


def bench_model(name: str, steps: int, batch_shape: str = "") -> dict:
    """One model variant alone (see `main` for the interleaved comparison)."""
    config = _variant_config(name, batch_shape)
    batch = _batch(config, np.random.default_rng(0))
    runner = _Runner(config, name, batch, bench_sessions(config), max(steps, 1))
    runner.round()
    return _result(runner)


def _result(runner: _Runner) -> dict:
    c = runner.config
    b, length = c.train.batch_size, c.train.window_steps
    step, real = float(np.median(runner.premade)), float(np.median(runner.real))
    flops = runner.flops()
    return {
        "model": runner.label,
        "params": runner.params(),
        "batch": f"{b}x{length}",
        "crop": c.video.crop_size,
        "frame_stride": c.model.video_frame_stride,
        "step_s": step,
        "real_step_s": real,
        "frames_per_s": b * length / step,
        "flops_per_step": flops,
        "flops_per_s": flops / step,
    }


def _overrides(items: list[str]) -> dict:
    """--set KEY=VALUE items -> {key: value}; a value is a Python literal, or else a string."""
    from avemo.config import parse_assignments

    try:
        return parse_assignments(items)
    except ValueError as err:
        raise SystemExit(f"--set {err}") from None


def torch_spec(config, feature_dim: int = 93) -> dict:
    """The sizes of `config`'s model for `avemo/bench/torch_reference.py`."""
    m = config.model
    return {
        "batch": config.train.batch_size,
        "window": config.train.window_steps,
        "crop": config.video.crop_size,
        "channels": 1 if config.video.color_mode == "gray" else 3,
        "conv_features": list(m.alexnet.conv_features),
        "conv_strides": list(m.alexnet.conv_strides),
        "fc_features": list(m.alexnet.fc_features),
        "frame_stride": m.video_frame_stride,
        "feature_dim": feature_dim,
        "audio_dense": m.audio_dense_features,
        "audio_input_dropout": m.audio_input_dropout,
        "lstm": m.lstm_features,
        "attention": m.attention_features,
        "output_lstm": m.output_lstm_features,
        "head_dropout": m.head_dropout,
        "aux_weight": config.loss.aux_weight,
        # the face tower (issue 9): the default's model since then
        "video_lstm": m.video_lstm_features,
        "face_lstm_dense": m.face_lstm_dense_features,
        "attention_query": m.attention_query,
        "face_context_lstm": m.face_context_lstm,
        "gate_availability": m.gate_inputs == "states+availability",
        "modality_heads": m.modality_heads,
        "head_weight": config.loss.modality_head_weight,
        "gate_per_output": m.gate_per_output,
    }


def _torch_python(arg: str) -> str | None:
    import importlib.util
    import os

    if arg:
        return arg
    if os.environ.get("AVEMO_TORCH_PYTHON"):
        return os.environ["AVEMO_TORCH_PYTHON"]
    return sys.executable if importlib.util.find_spec("torch") is not None else None


def _torch_round(python: str, spec: dict, steps: int, threads: int) -> dict:
    import json
    import os
    import subprocess

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_reference.py")
    out = subprocess.run(
        [
            python,
            script,
            "--spec",
            json.dumps(spec),
            "--steps",
            str(steps),
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m avemo.bench train")
    parser.add_argument("--models", default="default,paper")
    parser.add_argument(
        "--variants",
        default="e2e,frozen,frozen_stream,bf16",
        help="of each model: e2e, frozen, frozen_stream, bf16",
    )
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians)")
    parser.add_argument(
        "--min-round-seconds",
        type=float,
        default=0.3,
        help="a model whose --steps take less runs more steps per round, so its figure is the "
        "steady-state step (as in training, where steps run back to back) and not a few steps "
        "after the other models' rounds, each paying the same start-up (0: exactly --steps)",
    )
    parser.add_argument("--torch", default="", help="a Python with torch for the reference")
    parser.add_argument("--torch-threads", type=int, default=0, help="0 = torch's default")
    parser.add_argument("--flops-only", default="", help=argparse.SUPPRESS)  # batch shapes
    parser.add_argument("--batch", default="", help="windows x steps, e.g. 8x150")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every model, e.g. train.pipeline_threads=8 (repeatable)",
    )
    parser.add_argument(
        "--alt",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="also time each model variant with these overrides, in the same rounds (repeatable)",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, ".")
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv[:1])
    overrides = _overrides(args.set)
    if args.flops_only:
        import json

        shapes = json.loads(args.flops_only)
        flops = lowered_flops(args.models, shapes, args.batch, overrides)
        print(json.dumps({"flops": flops}))
        return
    accelerator = jax.default_backend() != "cpu"
    names = []
    for model in args.models.split(","):
        for variant in args.variants.split(","):
            if variant == "bf16" and not accelerator:
                continue
            if variant == "frozen_stream" and _config(model).model.attention_query != "face":
                continue  # a face stream that reads the voice (the paper's) cannot be kept fixed
            names.append(model if variant == "e2e" else f"{model}:{variant}")
    alts = [("", {})] + [(alt, _overrides(alt.split(","))) for alt in args.alt]
    runners = []
    for name in names:
        for alt, extra in alts:
            both = {**overrides, **extra}
            config = _variant_config(name, args.batch, both)
            batch = _batch(config, np.random.default_rng(0))
            runner = _Runner(
                config, name, batch, bench_sessions(config), args.steps, both,
                args.min_round_seconds,
            )  # fmt: skip
            runner.label = f"{name}[{alt}]" if alt else name
            runners.append(runner)
    python = _torch_python(args.torch)
    # end-to-end fusion rows, --alt rows included: the reference builds each row's model
    torch_runs = [r for r in runners if ":" not in r.name and r.config.model.mode == "fusion"]
    torch_times: dict[str, list[float]] = {r.label: [] for r in torch_runs} if python else {}
    torch_info: dict[str, dict] = {}
    peaks: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for _ in range(args.rounds):
        peaks["float32"].append(matmul_peak())
        if accelerator:
            peaks["bfloat16"].append(matmul_peak(dtype=jnp.bfloat16))
        for runner in runners:
            runner.round()
            if runner.label in torch_times:
                info = _torch_round(
                    python, torch_spec(runner.config), args.steps, args.torch_threads
                )
                torch_times[runner.label] += info["step_s"]
                torch_info[runner.label] = info
    peak = {k: float(np.median(v)) for k, v in peaks.items() if v}
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})")
    print(
        f"matmul peak (f32, default precision, median of {args.rounds}): "
        f"{peak['float32'] / 1e9:.1f} GFLOP/s"
    )
    if "bfloat16" in peak:
        print(f"matmul peak (bf16, median of {args.rounds}): {peak['bfloat16'] / 1e9:.1f} GFLOP/s")
    print(
        f"medians of {args.rounds} alternating rounds of >= {args.steps} steps and >= "
        f"{args.min_round_seconds:g} s each (steps per round: "
        + ", ".join(f"{r.label} {r.steps}" for r in runners)
        + ")"
    )
    print(
        "| model | params | batch (windows x steps) | crop | frame stride | step (s) | "
        "real pipeline step (s) | real / pre-made | label frames/s | GFLOP/step | GFLOP/s | "
        "% of matmul peak (its dtype) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = {}
    for runner in runners:
        r = _result(runner)
        results[runner.label] = r
        dtype = runner.config.model.dtype
        print(
            f"| {r['model']} | {r['params']:,} | {r['batch']} | {r['crop']} | "
            f"{r['frame_stride']} | {r['step_s']:.4f} | {r['real_step_s']:.4f} | "
            f"{r['real_step_s'] / r['step_s']:.2f} | {r['frames_per_s']:.0f} | "
            f"{r['flops_per_step'] / 1e9:.2f} | {r['flops_per_s'] / 1e9:.1f} | "
            f"{100 * r['flops_per_s'] / peak.get(dtype, peak['float32']):.1f}% "
            f"({'bf16' if dtype == 'bfloat16' else 'f32'}) |",
            flush=True,
        )
    for variant, what in (("frozen", "frozen-face"), ("frozen_stream", "frozen-face-stream")):
        if "default" in results and f"default:{variant}" in results:
            ratio = results["default"]["step_s"] / results[f"default:{variant}"]["step_s"]
            print(f"{what} step: {ratio:.1f}x faster than the end-to-end default step")
    for name, times in torch_times.items():
        info = torch_info[name]
        ours = results[name]["step_s"]
        theirs = float(np.median(times))
        print(
            f"torch {info['torch']} eager ({info['threads']} threads), {name}: "
            f"{info['params']:,} params (avemo {results[name]['params']:,}), step {theirs:.4f} s; "
            f"avemo {ours:.4f} s -> avemo is "
            f"{theirs / ours:.2f}x PyTorch's speed"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
