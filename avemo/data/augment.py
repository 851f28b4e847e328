"""Training-time modality dropout: whole windows with the face removed or the voice silenced.

training window -> with probability `train.modality_dropout` one modality is taken away, face or
voice with equal odds, by the very transforms of the missing-modality protocol
(`avemo.evaluate`): face removed = faces zero and face flag n = 0; voice silenced = the audio
features (and log-mel patches) the audio front end gives for digital silence, z-normalised with the
training statistics (Eq. 9), and speech energy m = 0. The gate β and the auxiliary loss (Eq. 31)
then see real absent cases with m and n that match the content, and the fusion cannot lean on one
stream alone (the face path was nearly unused without it: docs/fusion.md).

Far-field augmentation (`train.far_field_augment`): with that probability a window's voice is
replaced by the same speech heard from afar -- the session's audio through the far-field transform
of the protocol (attenuation, low-pass, room reverberation) with a room and a distance drawn per
session from ranges around the protocol's (`FAR_FIELD_RANGES`), run through the audio front end
and normalised with the training statistics; m comes from the degraded audio, as at test time.
Labels and faces are untouched: the subject's emotion is the same, only the microphone moved.

The random choice per window comes from Grain's `random_map` (seeded by `config.seed` and the
window's index), so a resumed run sees the same augmented batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def drop_face(
    window: Mapping[str, np.ndarray], faceless: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Modality dropout's face removal on one window: `remove_face`, then the inputs that stand
    for "no face" where zeros would not (`faceless`, broadcast to the window's shapes: a frozen
    CNN's map of a blank crop for cached maps, a frozen face stream's states on such a window;
    `pipeline.WindowSource.faceless`, `avemo.data.frozen.stream_windows`)."""
    out = remove_face(window)
    for key, value in faceless.items():
        if key in window:
            out[key] = np.broadcast_to(value, window[key].shape).astype(window[key].dtype)
    return out


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

    def __init__(
        self,
        rate: float,
        silence: Mapping[str, np.ndarray],
        faceless: Mapping[str, np.ndarray] | None = None,
    ):
        """`faceless`: see `drop_face`."""
        self.rate = float(rate)
        self.silence = {k: np.asarray(v) for k, v in silence.items()}
        self.faceless = {k: np.asarray(v) for k, v in (faceless or {}).items()}

    def __call__(self, window: dict, rng: np.random.Generator) -> dict:
        if rng.uniform() >= self.rate:
            return window
        if rng.uniform() < 0.5:
            return drop_face(window, self.faceless)
        return silence_voice(window, self.silence)

    def __repr__(self) -> str:  # Grain compares reprs when restoring iterator state
        return f"ModalityDropout(rate={self.rate})"


# Far-field rooms for training, drawn uniformly per session: attenuation (dB), low-pass cutoff
# (Hz), reverberation decay constant (s). The protocol's room (25 dB, 1.8 kHz, 0.12 s) lies inside.
FAR_FIELD_RANGES = {
    "attenuation_db": (12.0, 35.0),
    "cutoff_hz": (1200.0, 3500.0),
    "decay_seconds": (0.04, 0.25),
}
# Prefix of a window's far-field audio inputs, cut beside the clean ones and removed by
# `FarFieldVoice` before batching.
FAR_FIELD_PREFIX = "far_field/"


def far_field_params(rng: np.random.Generator) -> dict[str, float]:
    """A far-field room from `FAR_FIELD_RANGES`, and the seed of its room response."""
    params = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in FAR_FIELD_RANGES.items()}
    params["seed"] = int(rng.integers(2**31))
    return params


def far_field_sessions(
    sessions: Sequence[Any],
    raw_sessions: Mapping[str, Any],
    config: ml_collections.ConfigDict,
    normalizer: Any,
    threads: int = 1,
) -> dict[str, dict[str, np.ndarray]]:
    """{session: its audio inputs heard from afar} for far-field augmentation.

    Each session's room is drawn from `FAR_FIELD_RANGES` by the session's name (the same rooms
    for every seed, so a population computes them once); the audio front end runs on the degraded
    recording (`threads` at a time).
    """
    import zlib

    from avemo import evaluate

    rngs = [np.random.default_rng([zlib.crc32(s.name.encode()), 104729]) for s in sessions]

    def one(item):
        session, rng = item
        signal = evaluate.session_signal(raw_sessions[session.name], config)
        far = evaluate.far_field(signal, config.audio.sample_rate, **far_field_params(rng))
        degraded = evaluate.with_audio(session, far, config, normalizer)
        return {k: degraded.arrays[k] for k in evaluate.AUDIO_KEYS if k in degraded.arrays}

    items = list(zip(sessions, rngs, strict=True))
    if threads > 1 and len(items) > 1:  # openSMILE runs outside the GIL
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(threads, len(items))) as pool:
            made = list(pool.map(one, items))
    else:
        made = [one(item) for item in items]
    return {s.name: m for s, m in zip(sessions, made, strict=True)}


class FarFieldVoice:
    """Grain random map: with probability `rate` the window's voice is its far-field version."""

    def __init__(self, rate: float):
        self.rate = float(rate)

    def __call__(self, window: dict, rng: np.random.Generator) -> dict:
        far = {
            k[len(FAR_FIELD_PREFIX) :]: window[k] for k in window if k.startswith(FAR_FIELD_PREFIX)
        }
        out = {k: v for k, v in window.items() if not k.startswith(FAR_FIELD_PREFIX)}
        if far and rng.uniform() < self.rate:
            out.update(far)
        return out

    def __repr__(self) -> str:  # Grain compares reprs when restoring iterator state
        return f"FarFieldVoice(rate={self.rate})"


def apply(
    ds: Any,
    config: ml_collections.ConfigDict,
    silence: Mapping[str, np.ndarray] | None,
    faceless: Mapping[str, np.ndarray] | None = None,
):
    """`ds` (a Grain MapDataset of windows) with far-field voices and modality dropout when the
    config asks for them (far field first: a far-field window may then lose a modality too).
    `faceless`: see `ModalityDropout`."""
    if config.train.far_field_augment > 0:
        ds = ds.random_map(FarFieldVoice(config.train.far_field_augment), seed=config.seed + 6007)
    rate = config.train.modality_dropout
    if rate <= 0:
        return ds
    if silence is None:
        raise ValueError("train.modality_dropout > 0 needs the silent window (silent_window)")
    return ds.random_map(ModalityDropout(rate, silence, faceless), seed=config.seed + 7919)
