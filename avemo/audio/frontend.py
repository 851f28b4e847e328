"""The audio front end's one entry point: a file or array → model inputs on the label grid.

raw file → `io` (16 kHz mono 16-bit) → `dsp` (pre-emphasis, frames, endpoints, speech energy)
→ `features` (grid statistics) and `spectrogram` (log-mel) → the preparation cache.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

import ml_collections
import numpy as np

from avemo.audio import dsp, features, io
from avemo.audio.errors import AudioError

Source = str | os.PathLike | tuple[np.ndarray, float]


def num_steps_for(duration_seconds: float, step_seconds: float = 0.04) -> int:
    """Label steps of a session without labels: floor(duration / hop) + 1 (docs/contracts.md)."""
    return int(math.floor(duration_seconds / step_seconds + 1e-9)) + 1


def load_source(
    source: Source, cfg: ml_collections.ConfigDict, report: io.LoadReport | None = None
) -> tuple[np.ndarray, str]:
    """(16 kHz mono 16-bit samples, name for errors) of a path or a (signal, rate) tuple."""
    options = dict(
        resample_quality=cfg.resample_quality,
        clip_level=cfg.clip_level,
        max_clipped_fraction=cfg.max_clipped_fraction,
        report=report,
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
    report: io.LoadReport | None = None,
) -> dict[str, np.ndarray]:
    """Audio model inputs of one session on the label grid t_k = k * step_seconds.

    Args:
      source: wav/flac/mp4/avi/mkv path, or a (signal [n] or [n, channels], sample_rate) tuple.
      num_steps: T, the number of label steps (from the labels); None → `num_steps_for` the
        audio's duration.
      cfg: the audio config (`avemo.audio.config.defaults()` or `config.audio`).
      step_seconds: the label hop (`config.data.step_seconds`).
      report: filled with what loading found (`avemo.audio.io.LoadReport`), if given.

    Returns:
      audio_features [T, D] float32 (not z-normalised), audio_feature_names [D] str,
      logmel [N, n_mels] float32 (column j at j * cfg.hop_seconds, N covers the grid),
      speech_energy [T] float32 in [0, 1], speech_mask [T] bool.
      Audio shorter than the grid counts as silence at the end; audio beyond it is ignored,
      except that centred windows may read it.

    Raises:
      AudioError: the file cannot be used (see `avemo.audio.io.load`).
    """
    signal, name = load_source(source, cfg, report)
    num_steps = _check_grid(signal, num_steps, cfg, step_seconds, name)
    return features_from_signal(signal, num_steps, cfg, step_seconds)


def _check_grid(
    signal: np.ndarray,
    num_steps: int | None,
    cfg: ml_collections.ConfigDict,
    step_seconds: float,
    name: str,
) -> int:
    duration = signal.size / cfg.sample_rate
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
    return num_steps


def features_from_signal(
    signal: np.ndarray, num_steps: int, cfg: ml_collections.ConfigDict, step_seconds: float = 0.04
) -> dict[str, np.ndarray]:
    """`extract` on an already loaded 16 kHz mono signal (time 0 = its first sample)."""
    rate = cfg.sample_rate
    grid_end = (num_steps - 1) * step_seconds
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
    pooled_seconds = cfg.features.speech_pooled_seconds
    if pooled_seconds > 0:
        window = max(1, int(round(pooled_seconds / step_seconds)))
        pooled, share = features.speech_pooled(
            table, speech_energy, window, cfg.features.speech_pooled_alignment
        )
        table = np.concatenate([table, pooled, share[:, None]], axis=1)
        names = [*names, *(f"{n}_speech{pooled_seconds:g}s" for n in names)]
        names.append(f"speech_share_{pooled_seconds:g}s")
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


def extract_long(
    source: Source,
    num_steps: int | None,
    cfg: ml_collections.ConfigDict,
    step_seconds: float = 0.04,
    *,
    chunk_seconds: float = 300.0,
    margin_seconds: float = 10.0,
    keep_logmel: bool = True,
    report: io.LoadReport | None = None,
    progress: Callable[[float], None] | None = None,
) -> dict[str, np.ndarray]:
    """`extract` in chunks of the grid, so that memory stays bounded for hour-long recordings.

    Recordings up to chunk + margin long go through `extract` unchanged. Longer ones are cut
    into chunks of `chunk_seconds` (whole seconds, so that the 40 ms grid, the 10 ms frames and
    the 1 s statistics shift stay aligned) read with `margin_seconds` of context on each side,
    which covers every window that reaches across a border (3 s statistics, 1 s shift, openSMILE
    and endpoint smoothing). The one difference to a whole-file run: the endpoint detector's
    noise floor (a percentile of the frame energies) is that of each chunk and its margins, a
    local noise floor. `progress(seconds done)` is called after each chunk.

    Returns:
      as `extract`; logmel only when `keep_logmel` (else an empty [0, n_mels] array).
    """
    if chunk_seconds != int(chunk_seconds) or margin_seconds != int(margin_seconds):
        raise ValueError("chunk_seconds and margin_seconds must be whole seconds")
    signal, name = load_source(source, cfg, report)
    num_steps = _check_grid(signal, num_steps, cfg, step_seconds, name)
    # The context a step's features reach back: the speech pooling plus a statistics window.
    fcfg = cfg.features
    reach = fcfg.speech_pooled_seconds + fcfg.window_seconds / 2 + fcfg.shift_seconds
    margin_seconds = max(margin_seconds, float(math.ceil(reach)))
    chunk_steps = int(round(chunk_seconds / step_seconds))
    margin_steps = int(round(margin_seconds / step_seconds))
    rate = cfg.sample_rate
    if num_steps <= chunk_steps + margin_steps:
        out = features_from_signal(signal, num_steps, cfg, step_seconds)
        if progress is not None:
            progress(num_steps * step_seconds)
    else:
        parts: dict[str, list[np.ndarray]] = {}
        per_column = int(round(step_seconds / cfg.hop_seconds))
        for first in range(0, num_steps, chunk_steps):
            last = min(first + chunk_steps, num_steps)
            local_first = max(first - margin_steps, 0)
            local_last = min(last + margin_steps, num_steps)
            start_sample = int(round(local_first * step_seconds * rate))
            stop_sample = int(round((local_last - 1) * step_seconds * rate)) + 1
            window = signal[start_sample : stop_sample + int(margin_seconds * rate)]
            local = features_from_signal(window, local_last - local_first, cfg, step_seconds)
            keep = slice(first - local_first, last - local_first)
            for key in ("audio_features", "speech_energy", "speech_mask"):
                parts.setdefault(key, []).append(local[key][keep])
            if keep_logmel:
                columns = slice(
                    keep.start * per_column, None if last == num_steps else keep.stop * per_column
                )
                parts.setdefault("logmel", []).append(local["logmel"][columns])
            names = local["audio_feature_names"]
            if progress is not None:
                progress(last * step_seconds)
        out = {key: np.concatenate(values) for key, values in parts.items()}
        out["audio_feature_names"] = names
    if not keep_logmel:
        out["logmel"] = np.zeros((0, cfg.spectrogram.n_mels), np.float32)
    return out
