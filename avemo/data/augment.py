"""Training-time modality dropout: whole windows with the face removed or the voice silenced.

training window -> with probability `train.modality_dropout` one modality is taken away, face or
voice with equal odds, by the very transforms of the missing-modality protocol
(`avemo.evaluate`): face removed = faces zero and face flag n = 0; voice silenced = the audio
features (and log-mel patches) the audio front end gives for digital silence, z-normalised with the
training statistics (Eq. 9), and speech energy m = 0. The gate β and the auxiliary loss (Eq. 31)
then see real absent cases with m and n that match the content, and the fusion cannot lean on one
stream alone (the face path was nearly unused without it: docs/fusion.md).

The random choice per window comes from Grain's `random_map` (seeded by `config.seed` and the
window's index), so a resumed run sees the same augmented batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

# Extra steps computed on each side of the silent window so that the kept rows are free of the
# front end's edge effects.
_MARGIN_STEPS = 25


def silent_window(
    config: ml_collections.ConfigDict, normalizer: Any | None, feature_dim: int
) -> dict[str, np.ndarray]:
    """Model inputs of `train.window_steps` steps of digital silence (the protocol's transform).

    Returns {"audio_features": [L, D], "speech_energy": [L]} (+ "spectrogram" [L, ...] when the
    audio CNN is on). Without a normaliser (the in-memory corpus has no audio front end) the
    features are zeros, i.e. the training mean.
    """
    length = int(config.train.window_steps)
    out = {"speech_energy": np.zeros(length, np.float32)}
    if normalizer is None:
        out["audio_features"] = np.zeros((length, feature_dim), np.float32)
        return out
    from avemo.audio import frontend, normalize

    steps = length + 2 * _MARGIN_STEPS
    samples = int(np.ceil(steps * config.data.step_seconds * config.audio.sample_rate)) + 1
    audio = frontend.extract(
        (np.zeros(samples, np.float32), config.audio.sample_rate),
        steps,
        config.audio,
        step_seconds=config.data.step_seconds,
    )
    features = normalize.apply(audio["audio_features"], normalizer, audio["audio_feature_names"])
    keep = slice(_MARGIN_STEPS, _MARGIN_STEPS + length)
    out["audio_features"] = np.asarray(features[keep], np.float32)
    if config.model.audio_cnn.enabled:
        from avemo.audio import spectrogram

        rows = np.arange(_MARGIN_STEPS, _MARGIN_STEPS + length)
        out["spectrogram"] = spectrogram.patches(audio["logmel"], rows, config.audio).astype(
            np.float32
        )
    return out


def remove_face(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Protocol (a) on a window or a session's arrays: every face input ("faces", and any other
    "face*" array such as the flag) zero, so face_present = 0; everything else untouched."""
    return {
        k: np.zeros_like(v) if k.startswith("face") and k != "face_boxes" else v
        for k, v in arrays.items()
    }


def silence_voice(
    window: Mapping[str, np.ndarray], silence: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Protocol (b) on one window: the audio inputs of silence, speech_energy 0."""
    out = dict(window)
    for key, value in silence.items():
        if key in window:
            out[key] = np.broadcast_to(value, window[key].shape).astype(window[key].dtype)
    return out


class ModalityDropout:
    """Grain random map: per window, drop the face or the voice with probability `rate`."""

    def __init__(self, rate: float, silence: Mapping[str, np.ndarray]):
        self.rate = float(rate)
        self.silence = {k: np.asarray(v) for k, v in silence.items()}

    def __call__(self, window: dict, rng: np.random.Generator) -> dict:
        if rng.uniform() >= self.rate:
            return window
        if rng.uniform() < 0.5:
            return remove_face(window)
        return silence_voice(window, self.silence)

    def __repr__(self) -> str:  # Grain compares reprs when restoring iterator state
        return f"ModalityDropout(rate={self.rate})"


def apply(ds: Any, config: ml_collections.ConfigDict, silence: Mapping[str, np.ndarray] | None):
    """`ds` (a Grain MapDataset of windows) with modality dropout when the config asks for it."""
    rate = config.train.modality_dropout
    if rate <= 0:
        return ds
    if silence is None:
        raise ValueError("train.modality_dropout > 0 needs the silent window (silent_window)")
    return ds.random_map(ModalityDropout(rate, silence), seed=config.seed + 7919)
