"""An in-memory corpus with a learnable signal, for tests and smoke runs without any files.

It produces model-ready `PreparedSession`s directly (it bypasses the front ends): latent arousal
and valence move smoothly; the audio features carry arousal, the face images carry valence (a
brightness pattern), with spans without face and without speech so that the gate and the
auxiliary loss (Eq. 31) have something to learn.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from avemo.data.pipeline import PreparedSession


def defaults() -> ml_collections.ConfigDict:
    """Keys of `config.data.memory`."""
    c = ml_collections.ConfigDict()
    c.train_sessions = 4
    c.dev_sessions = 2
    c.steps = 300
    c.face_size = 32
    c.feature_dim = 8
    c.seed = 0
    return c


def _smooth_trajectory(rng: np.random.Generator, steps: int, time_constant: int) -> np.ndarray:
    noise = rng.standard_normal(steps + 4 * time_constant)
    kernel = np.exp(
        -0.5 * (np.arange(-2 * time_constant, 2 * time_constant + 1) / time_constant) ** 2
    )
    smooth = np.convolve(noise, kernel / kernel.sum(), mode="same")[2 * time_constant :][:steps]
    return np.tanh(smooth / (smooth.std() + 1e-8))


def _session(
    name: str, split: str, cfg: ml_collections.ConfigDict, rng: np.random.Generator
) -> PreparedSession:
    t, size, dim = cfg.steps, cfg.face_size, cfg.feature_dim
    arousal = _smooth_trajectory(rng, t, 25)
    valence = _smooth_trajectory(rng, t, 25)
    face_present = (rng.random() > 0.0) * np.ones(t, np.float32)
    gap = rng.integers(0, t - t // 6)
    face_present[gap : gap + t // 8] = 0.0
    speech = np.ones(t, np.float32)
    pause = rng.integers(0, t - t // 6)
    speech[pause : pause + t // 8] = 0.0
    features = rng.standard_normal((t, dim)).astype(np.float32) * 0.3
    features[:, 0] += 1.5 * arousal * speech
    features[:, 1] += 0.5 * valence * speech
    yy, xx = np.mgrid[0:size, 0:size] / size
    pattern = np.sin(2 * np.pi * (xx + yy))
    brightness = 128 + 60 * valence[:, None, None] * pattern[None] + 20 * arousal[:, None, None]
    faces = np.clip(brightness + rng.normal(0, 8, (t, size, size)), 0, 255).astype(np.uint8)
    faces = faces[..., None] * face_present[:, None, None, None].astype(np.uint8)
    return PreparedSession(
        name=name,
        split=split,
        arrays={
            "faces": faces,
            "face_present": face_present,
            "audio_features": features,
            "speech_energy": speech * (0.5 + 0.5 * (arousal + 1) / 2),
            "labels": np.stack([arousal, valence], axis=1).astype(np.float32),
        },
    )


def make_sessions(cfg: ml_collections.ConfigDict) -> list[PreparedSession]:
    """Train and dev sessions, deterministic in `cfg.seed`."""
    rng = np.random.default_rng(cfg.seed)
    sessions = []
    for split, count in (("train", cfg.train_sessions), ("dev", cfg.dev_sessions)):
        for k in range(1, count + 1):
            sessions.append(_session(f"{split}_{k}", split, cfg, rng))
    return sessions
