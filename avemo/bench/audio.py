"""Benchmark of the audio front end: real-time factor on 300 s of 16 kHz audio, on one core.

Run: `python -m avemo.bench audio` (or `python -m avemo.bench.audio`) [--seconds 300]
[--opensmile eGeMAPSv02|ComParE_2016|none] [--repeats 3]. Prints the whole `extract` and its
split per stage; the numbers are the best of `repeats` runs.
"""

from __future__ import annotations

import os

# One core: pin before NumPy/SciPy start their thread pools.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import soundfile  # noqa: E402

from avemo.audio import config, dsp, features, frontend, io  # noqa: E402


def _speech_like(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """Syllable-like harmonic bursts (100–220 Hz f0) separated by pauses, over faint noise."""
    rng = np.random.default_rng(seed)
    x = 1e-3 * rng.standard_normal(int(seconds * rate))
    t = 0.2
    while t < seconds - 0.7:
        length = rng.uniform(0.15, 0.6)
        n = int(length * rate)
        time_axis = np.arange(n) / rate
        f0 = rng.uniform(100, 220)
        burst = sum(np.sin(2 * np.pi * k * f0 * time_axis) / k for k in range(1, 20))
        start = int(t * rate)
        x[start : start + n] += 0.1 * rng.uniform(0.3, 1.0) * burst * np.hanning(n) ** 0.3
        t += length + rng.uniform(0.05, 0.7)
    return x


def _best(function: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avemo.bench audio", description=__doc__)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--opensmile", default="eGeMAPSv02")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    cfg = config.defaults()
    cfg.features.opensmile_set = args.opensmile
    rate, step = cfg.sample_rate, 0.04
    num_steps = frontend.num_steps_for(args.seconds, step)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "speech.wav")
        soundfile.write(path, _speech_like(args.seconds, rate), rate, subtype="PCM_16")
        frontend.extract((np.zeros(rate), rate), None, cfg)  # Warm-up (imports, openSMILE).

        total, out = _best(lambda: frontend.extract(path, num_steps, cfg), args.repeats)
        stages: dict[str, float] = {}
        stages["load (libsndfile, 16-bit)"], signal = _best(
            lambda: io.load(path, rate), args.repeats
        )
        (
            stages["pre-emphasis + frames + STFT (energy, ZCR, log-mel, MFCC, centroid, flux)"],
            (analysis),
        ) = _best(lambda: features.analyse_frames(signal, cfg), args.repeats)
        stages["endpoint detection"], mask = _best(
            lambda: dsp.endpoint_mask(analysis.energy_db, analysis.zcr, cfg.hop_seconds),
            args.repeats,
        )
        stages["speech energy m"], _ = _best(
            lambda: frontend.step_power_db(signal, num_steps, step, rate), args.repeats
        )
        if args.opensmile != "none":
            times = np.arange(analysis.num_frames) * cfg.hop_seconds
            stages[f"openSMILE {args.opensmile} LLDs"], _ = _best(
                lambda: features.opensmile_llds(signal, rate, args.opensmile, times),
                args.repeats,
            )
        no_smile = config.defaults()
        no_smile.features.opensmile_set = "none"
        stages["window statistics + beat histogram + pause"], _ = _best(
            lambda: features.grid_features(signal, analysis, mask, num_steps, step, no_smile),
            args.repeats,
        )

    print(f"audio front end, {args.seconds:g} s of 16 kHz audio, one core, best of {args.repeats}")
    print(f"  rows {out['audio_features'].shape[0]}, features {out['audio_features'].shape[1]}")
    print(f"  whole extract(): {total:.3f} s  →  {args.seconds / total:.0f}× real time")
    print("  per stage (timed separately):")
    for name, seconds in stages.items():
        print(f"    {seconds:7.3f} s  {100 * seconds / total:5.1f}%  {name}")
    print(f"    {sum(stages.values()):7.3f} s  sum of stages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
