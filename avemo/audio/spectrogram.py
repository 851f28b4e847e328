"""Log-mel spectrogram of the shared STFT and the CNN input patches of §6.2 (front end → cache).

Axes (the paper only says "24 × 120 per frame, 5 frames → 120 × 120"): a log-mel column is one
10 ms hop (25 ms Hamming window) with `n_mels` = 120 mel bands; a paper *frame* is 24 consecutive
columns (240 ms) × 120 bands; the CNN input of a label step is 5 such frames, i.e. 120 columns
(1.2 s) × 120 bands, laid out as [time, frequency].
"""

from __future__ import annotations

import ml_collections
import numpy as np

# Added to mel power before the log: silence maps to log(1e-10) ≈ -23.0, never -inf.
LOG_FLOOR = 1e-10


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Triangular filters equally spaced on the mel scale, peak 1, as a [n_fft//2 + 1, n_mels]
    matrix (power spectrum @ filterbank = mel power).

    With many bands and a short FFT the lowest triangles can fall between two FFT bins; such a
    band takes the bin nearest its centre (weight 1) so that no band is identically empty.
    """
    fmax = sample_rate / 2.0 if fmax is None else fmax
    if not 0.0 <= fmin < fmax <= sample_rate / 2.0:
        raise ValueError(f"need 0 <= fmin < fmax <= {sample_rate / 2}, got {fmin}, {fmax}")
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins[:, None] - left) / (centre - left)
    falling = (right - bins[:, None]) / (right - centre)
    weights = np.clip(np.minimum(rising, falling), 0.0, None)
    empty = weights.sum(axis=0) == 0
    if empty.any():
        nearest = np.abs(bins[:, None] - centre[empty]).argmin(axis=0)
        weights[nearest, np.flatnonzero(empty)] = 1.0
    return weights.astype(np.float32)


def log_mel(power: np.ndarray, filterbank: np.ndarray) -> np.ndarray:
    """Natural log of mel power: log(|X|² @ filterbank + LOG_FLOOR), [frames, n_mels] float32."""
    return np.log(power @ filterbank + np.float32(LOG_FLOOR)).astype(np.float32)


def patch_shape(cfg: ml_collections.ConfigDict) -> tuple[int, int]:
    """(P_time, P_freq) of a CNN input: (frame_columns * frames_per_patch, n_mels)."""
    spec = cfg.spectrogram
    return spec.frame_columns * spec.frames_per_patch, spec.n_mels


def patches(
    logmel: np.ndarray,
    steps: np.ndarray,
    cfg: ml_collections.ConfigDict,
    step_seconds: float = 0.04,
) -> np.ndarray:
    """Cuts the audio-CNN inputs for label steps (§6.2): [len(steps), P_time, P_freq] float32.

    Args:
      logmel: [N, n_mels] log-mel columns; column j is centred at j * cfg.hop_seconds.
      steps: label step indices k (time t_k = k * step_seconds).
      cfg: the audio config (`cfg.hop_seconds`, `cfg.spectrogram`).
      step_seconds: label hop (`config.data.step_seconds`).

    "centred": columns c_k - P/2 … c_k + P/2 - 1 with c_k the column at t_k; "causal": columns
    c_k - P + 1 … c_k (no look-ahead beyond the 12.5 ms half window of column c_k). Columns
    outside the session are the log floor ("silence") or the border column ("edge").
    """
    spec = cfg.spectrogram
    p_time, p_freq = patch_shape(cfg)
    logmel = np.asarray(logmel, np.float32)
    if logmel.ndim != 2 or logmel.shape[1] != p_freq:
        raise ValueError(f"logmel must be [N, {p_freq}], got {logmel.shape}")
    steps = np.asarray(steps, np.int64).reshape(-1)
    centre = np.rint(steps * (step_seconds / cfg.hop_seconds)).astype(np.int64)
    if spec.alignment == "centred":
        first = centre - p_time // 2
    elif spec.alignment == "causal":
        first = centre - p_time + 1
    else:
        raise ValueError(f"unknown spectrogram.alignment {spec.alignment!r}")
    columns = first[:, None] + np.arange(p_time)  # [S, P_time]
    count = logmel.shape[0]
    if spec.pad_mode == "edge":
        if count == 0:
            raise ValueError("cannot edge-pad an empty log-mel")
        return logmel[np.clip(columns, 0, count - 1)]
    if spec.pad_mode != "silence":
        raise ValueError(f"unknown spectrogram.pad_mode {spec.pad_mode!r}")
    padded = np.concatenate(
        [logmel, np.full((1, p_freq), np.log(np.float32(LOG_FLOOR)), np.float32)]
    )
    inside = (columns >= 0) & (columns < count)
    return padded[np.where(inside, columns, count)]
