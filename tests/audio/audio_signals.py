"""Synthetic test signals for the audio front-end tests (generated, processed by the real code)."""

from __future__ import annotations

import numpy as np

RATE = 16000


def tone(frequency: float, seconds: float, rate: int = RATE, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return amplitude * np.sin(2 * np.pi * frequency * t)


def voiced(seconds: float, rate: int = RATE, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A vowel-like sound: harmonics of a slowly wobbling f0 with formant-shaped amplitudes."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    out = np.zeros_like(t)
    for k in range(1, 30):
        freq = k * f0
        if freq > rate / 2 - 500:
            break
        formants = sum(np.exp(-0.5 * ((freq - fc) / 150.0) ** 2) for fc in (700.0, 1200.0, 2500.0))
        out += (0.2 + formants) / k * np.sin(k * phase)
    return 0.3 * out / np.abs(out).max()


def bursts(
    spans: list[tuple[float, float]],
    seconds: float,
    rate: int = RATE,
    noise: float = 1e-4,
    seed: int = 0,
) -> np.ndarray:
    """Voiced bursts at the given (start, end) seconds over faint white noise."""
    rng = np.random.default_rng(seed)
    x = noise * rng.standard_normal(int(round(seconds * rate)))
    for i, (start, end) in enumerate(spans):
        a, b = int(round(start * rate)), int(round(end * rate))
        x[a:b] += voiced((b - a) / rate, rate, f0=120.0 + 20 * i, seed=seed + i)
    return x


def speech_like(seconds: float, rate: int = RATE, seed: int = 0, noise: float = 1e-4) -> np.ndarray:
    """Syllable-like bursts of varying pitch and loudness separated by pauses."""
    rng = np.random.default_rng(seed)
    x = noise * rng.standard_normal(int(round(seconds * rate)))
    t = 0.2
    while t < seconds - 0.5:
        length = rng.uniform(0.15, 0.6)
        a = int(t * rate)
        burst = voiced(length, rate, f0=rng.uniform(100, 220), seed=int(rng.integers(1 << 30)))
        x[a : a + burst.size] += rng.uniform(0.3, 1.0) * burst * np.hanning(burst.size) ** 0.3
        t += length + rng.uniform(0.05, 0.7)
    return x
