"""The audio front end's one entry point: a file or array → model inputs on the label grid.

raw file → `io` (16 kHz mono 16-bit) → `dsp` (pre-emphasis, frames, endpoints, speech energy)
→ `features` (grid statistics) and `spectrogram` (log-mel) → the preparation cache.
"""

from __future__ import annotations

import logging
import math
import os

import ml_collections
import numpy as np

from avemo.audio import dsp, features, io
from avemo.audio.errors import AudioError

Source = str | os.PathLike | tuple[np.ndarray, float]


def num_steps_for(duration_seconds: float, step_seconds: float = 0.04) -> int:
    """Label steps of a session without labels: floor(duration / hop) + 1 (docs/contracts.md)."""
    return int(math.floor(duration_seconds / step_seconds + 1e-9)) + 1


def load_source(source: Source, cfg: ml_collections.ConfigDict) -> tuple[np.ndarray, str]:
    """(16 kHz mono 16-bit samples, name for errors) of a path or a (signal, rate) tuple."""
    options = dict(
        resample_quality=cfg.resample_quality,
        clip_level=cfg.clip_level,
        max_clipped_fraction=cfg.max_clipped_fraction,
    )
    if isinstance(source, tuple):
        if len(source) != 2:
            raise AudioError("<array>", "expected a (signal, sample_rate) tuple")
        signal, rate = source
        return io.prepare(
            signal, float(rate), cfg.sample_rate, name="<array>", **options
        ), "<array>"
    return io.load(source, cfg.sample_rate, **options), str(source)


def extract(
    source: Source,
    num_steps: int | None,
    cfg: ml_collections.ConfigDict,
    step_seconds: float = 0.04,
) -> dict[str, np.ndarray]:
    """Audio model inputs of one session on the label grid t_k = k * step_seconds.

    Args:
      source: wav/flac/mp4/avi/mkv path, or a (signal [n] or [n, channels], sample_rate) tuple.
      num_steps: T, the number of label steps (from the labels); None → `num_steps_for` the
        audio's duration.
      cfg: the audio config (`avemo.audio.config.defaults()` or `config.audio`).
      step_seconds: the label hop (`config.data.step_seconds`).

    Returns:
      audio_features [T, D] float32 (not z-normalised), audio_feature_names [D] str,
      logmel [N, n_mels] float32 (column j at j * cfg.hop_seconds, N covers the grid),
      speech_energy [T] float32 in [0, 1], speech_mask [T] bool.
      Audio shorter than the grid counts as silence at the end; audio beyond it is ignored,
      except that centred windows may read it.

    Raises:
      AudioError: the file cannot be used (see `avemo.audio.io.load`).
    """
    signal, name = load_source(source, cfg)
    rate = cfg.sample_rate
    duration = signal.size / rate
    if num_steps is None:
        num_steps = num_steps_for(duration, step_seconds)
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    num_steps = int(num_steps)
    grid_end = (num_steps - 1) * step_seconds
    if abs(duration - grid_end) > 1.0:
        logging.warning(
            "%s: audio lasts %.2f s but the label grid %.2f s; %s",
            name,
            duration,
            grid_end,
            "the rest counts as silence" if duration < grid_end else "the rest is ignored",
        )
    needed = int(math.ceil(grid_end * rate)) + 1
    if signal.size < needed:
        signal = np.concatenate([signal, np.zeros(needed - signal.size, np.float32)])

    analysis = features.analyse_frames(signal, cfg)
    endpoint = cfg.endpoint
    frame_mask = dsp.endpoint_mask(
        analysis.energy_db,
        analysis.zcr,
        cfg.hop_seconds,
        noise_percentile=endpoint.noise_percentile,
        high_margin_db=endpoint.high_margin_db,
        min_speech_db=endpoint.min_speech_db,
        low_margin_db=endpoint.low_margin_db,
        zcr_threshold=endpoint.zcr_threshold,
        zcr_extend_seconds=endpoint.zcr_extend_seconds,
        min_speech_seconds=endpoint.min_speech_seconds,
        min_pause_seconds=endpoint.min_pause_seconds,
    )
    step_frame = np.rint(np.arange(num_steps) * (step_seconds / cfg.hop_seconds)).astype(np.int64)
    step_frame = np.minimum(step_frame, analysis.num_frames - 1)
    speech_mask = frame_mask[step_frame]

    energy = step_power_db(signal, num_steps, step_seconds, rate)
    speech_energy = dsp.speech_energy(
        energy,
        cfg.speech_energy.threshold_db,
        cfg.speech_energy.full_db,
        cfg.speech_energy.session_relative_db,
    )
    if cfg.speech_energy.gate_with_speech_mask:
        speech_energy = np.where(speech_mask, speech_energy, np.float32(0.0))

    table, names = features.grid_features(
        signal, analysis, frame_mask, num_steps, step_seconds, cfg
    )
    return {
        "audio_features": table,
        "audio_feature_names": np.asarray(names, dtype=str),
        "logmel": analysis.logmel,
        "speech_energy": speech_energy.astype(np.float32),
        "speech_mask": speech_mask.astype(bool),
    }


def step_power_db(
    signal: np.ndarray, num_steps: int, step_seconds: float, sample_rate: int
) -> np.ndarray:
    """Short-term energy (Eq. 5, rectangular window of one step centred on t_k) of the signal as
    mean power in dB re full scale, per label step; digital silence gives -120 dB.
    """
    length = int(round(step_seconds * sample_rate))
    centre = np.rint(np.arange(num_steps) * step_seconds * sample_rate).astype(np.int64)
    start = np.clip(centre - length // 2, 0, signal.size)
    end = np.clip(start + length, 0, signal.size)
    running = np.concatenate([[0.0], np.cumsum(np.square(signal, dtype=np.float64))])
    count = np.maximum(end - start, 1)
    power = (running[end] - running[start]) / count
    with np.errstate(divide="ignore"):
        return np.maximum(10.0 * np.log10(np.maximum(power, 0.0)), -120.0)
