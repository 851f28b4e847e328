"""Frame-level descriptors of §4.1 Step 5 and their window statistics on the 40 ms label grid.

One shared STFT (Hamming frames of the pre-emphasised signal) gives energy (Eq. 5), ZCR (Eq. 6),
log-mel, MFCC, spectral centroid (Eq. 7) and flux (Eq. 8); openSMILE adds its low-level
descriptors. `grid_features` summarises them over 3 s windows (1 s shift) placed on the grid;
`speech_pooled` adds their speech-weighted average over the last seconds (issue 9).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import ml_collections
import numpy as np
import scipy.fft

from avemo.audio import dsp, spectrogram

_CHUNK_FRAMES = 2048  # STFT block size: bounds memory for hour-long files.
OPENSMILE_SETS = ("eGeMAPSv02", "ComParE_2016", "none")
# Weight of a step without speech in `speech_pooled` (m + this).
SPEECH_POOL_FLOOR = 0.01


@dataclasses.dataclass(frozen=True)
class FrameAnalysis:
    """Per-frame descriptors; frame j is centred at j * hop_seconds."""

    hop_seconds: float
    energy: np.ndarray  # [F] Eq. (5), pre-emphasised, windowed.
    energy_db: np.ndarray  # [F] mean power in dB re full scale.
    zcr: np.ndarray  # [F] Eq. (6), crossings per sample.
    logmel: np.ndarray  # [F, n_mels] float32.
    mfcc: np.ndarray  # [F, n_mfcc].
    centroid: np.ndarray  # [F] Eq. (7), Hz.
    flux: np.ndarray  # [F] Eq. (8).

    @property
    def num_frames(self) -> int:
        return self.energy.shape[0]


def spectral_centroid(magnitude: np.ndarray, frequencies: np.ndarray) -> np.ndarray:
    """Spectral centroid, Eq. (7): C_i = Σ_n f_n M_i[n] / Σ_n M_i[n] (Hz); 0 for a silent frame.

    Args:
      magnitude: [F, bins] spectral weights M_i[n]: |X| as in the paper, or |X|² (the front
        end's default, `features.centroid_weighting`), which keeps window side lobes from
        biasing low tones.
      frequencies: [bins] bin frequencies f_n in Hz.
    """
    total = magnitude.sum(axis=-1, dtype=np.float64)
    weighted = magnitude @ frequencies.astype(magnitude.dtype)
    return np.divide(weighted, total, out=np.zeros_like(total), where=total > 0)


def spectral_flux(magnitude: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """Spectral flux, Eq. (8): F_i = Σ_n (N_i[n] - N_{i-1}[n])², N = M / ||M||₂ per frame.

    A silent frame normalises to all zeros. The first frame's predecessor is `previous` (the
    normalised last frame of the preceding block) or, when None, the frame itself (flux 0).

    Returns:
      [F] float64 flux.
    """
    norm = np.sqrt(np.square(magnitude, dtype=np.float64).sum(axis=-1, keepdims=True))
    normalised = np.divide(magnitude, norm, out=np.zeros(magnitude.shape), where=norm > 0)
    before = normalised[:1] if previous is None else previous.reshape(1, -1)
    shifted = np.concatenate([before, normalised[:-1]])
    return np.square(normalised - shifted).sum(axis=-1)


def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II rows 1 … n_out as an [n_in, n_out] matrix (log-mel @ it = MFCC c1…)."""
    k = np.arange(1, n_out + 1)[None, :]
    n = np.arange(n_in)[:, None]
    return (np.sqrt(2.0 / n_in) * np.cos(np.pi * k * (2 * n + 1) / (2 * n_in))).astype(np.float32)


def mfcc(logmel: np.ndarray, n_mfcc: int) -> np.ndarray:
    """MFCC c1 … c_{n_mfcc}: DCT-II of the log mel-band energies (Step 5, "MFCC")."""
    return logmel @ dct_matrix(logmel.shape[-1], n_mfcc)


def analyse_frames(signal: np.ndarray, cfg: ml_collections.ConfigDict) -> FrameAnalysis:
    """Pre-emphasis, frames, windows and one STFT shared by every frame descriptor (Steps 2–5).

    Energy, log-mel, MFCC, centroid and flux use the pre-emphasised signal (Eq. 2). The ZCR
    (Eq. 6) counts crossings of the signal itself: pre-emphasis whitens low-frequency noise
    (hum, rumble) up to the ZCR of fricatives, which would remove the contrast the endpoint
    detector's ZCR gate relies on.

    Args:
      signal: [n] samples at cfg.sample_rate (16-bit grid, not pre-emphasised).
      cfg: the audio config.
    """
    rate = cfg.sample_rate
    frame_length = int(round(cfg.frame_seconds * rate))
    hop = int(round(cfg.hop_seconds * rate))
    if cfg.n_fft < frame_length:
        raise ValueError(f"n_fft {cfg.n_fft} < frame length {frame_length} samples")
    w = dsp.window(cfg.window, frame_length)
    frames = dsp.frame_signal(dsp.pre_emphasis(signal, cfg.pre_emphasis), frame_length, hop)
    raw_frames = dsp.frame_signal(signal, frame_length, hop)
    count = frames.shape[0]
    filterbank = spectrogram.mel_filterbank(
        rate, cfg.n_fft, cfg.spectrogram.n_mels, cfg.spectrogram.fmin, cfg.spectrogram.fmax
    )
    frequencies = np.fft.rfftfreq(cfg.n_fft, 1.0 / rate)
    to_mfcc = dct_matrix(cfg.spectrogram.n_mels, cfg.features.n_mfcc)
    if cfg.features.centroid_weighting not in ("power", "magnitude"):
        raise ValueError(f"unknown features.centroid_weighting {cfg.features.centroid_weighting!r}")
    by_power = cfg.features.centroid_weighting == "power"
    energy = np.empty(count)
    zcr = np.empty(count)
    centroid = np.empty(count)
    flux = np.empty(count)
    logmel = np.empty((count, cfg.spectrogram.n_mels), np.float32)
    previous = None
    for lo in range(0, count, _CHUNK_FRAMES):
        hi = min(lo + _CHUNK_FRAMES, count)
        windowed = frames[lo:hi] * w
        energy[lo:hi] = np.einsum("ij,ij->i", windowed, windowed, dtype=np.float64)  # Eq. (5)
        zcr[lo:hi] = dsp.zero_crossing_rate(raw_frames[lo:hi])
        magnitude = np.abs(scipy.fft.rfft(windowed, n=cfg.n_fft, axis=-1, workers=1))
        power = np.square(magnitude)
        centroid[lo:hi] = spectral_centroid(power if by_power else magnitude, frequencies)
        flux[lo:hi] = spectral_flux(magnitude, previous)
        norm = np.linalg.norm(magnitude[-1].astype(np.float64))
        previous = magnitude[-1] / norm if norm > 0 else np.zeros(magnitude.shape[-1])
        logmel[lo:hi] = spectrogram.log_mel(power, filterbank)
    return FrameAnalysis(
        hop_seconds=cfg.hop_seconds,
        energy=energy,
        energy_db=dsp.energy_db(energy, w),
        zcr=zcr,
        logmel=logmel,
        mfcc=logmel @ to_mfcc,
        centroid=centroid,
        flux=flux,
    )


@functools.lru_cache(maxsize=2)
def _smile(feature_set: str):
    """One openSMILE extractor per feature set and process (building one takes ~0.5-3 s)."""
    import opensmile

    return opensmile.Smile(
        feature_set=getattr(opensmile.FeatureSet, feature_set),
        feature_level=opensmile.FeatureLevel.LowLevelDescriptors,
    )


def opensmile_llds(
    signal: np.ndarray, sample_rate: int, feature_set: str, frame_times: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """openSMILE low-level descriptors resampled (nearest frame) onto our frame times.

    Args:
      signal: [n] samples (not pre-emphasised: openSMILE's configs do their own).
      sample_rate: Hz.
      feature_set: "eGeMAPSv02" or "ComParE_2016".
      frame_times: [F] seconds at which values are wanted.

    Returns:
      ([F, d] float64, d names). NaN (openSMILE's answer to too-short input) becomes 0.
    """

    if feature_set not in OPENSMILE_SETS[:-1]:
        raise ValueError(f"unknown features.opensmile_set {feature_set!r}: {OPENSMILE_SETS}")
    smile = _smile(feature_set)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Segment too short, filling with NaN."
        table = smile.process_signal(np.asarray(signal, np.float32), sample_rate)
    names = [str(c) for c in table.columns]
    values = np.nan_to_num(table.to_numpy(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    starts = table.index.get_level_values("start").total_seconds().to_numpy()
    ends = table.index.get_level_values("end").total_seconds().to_numpy()
    centres = 0.5 * (starts + ends)
    if values.shape[0] == 0:
        return np.zeros((frame_times.size, len(names))), names
    nearest = np.searchsorted(centres, frame_times)
    nearest = np.clip(nearest, 1, len(centres) - 1) if len(centres) > 1 else np.zeros_like(nearest)
    if len(centres) > 1:
        closer_left = frame_times - centres[nearest - 1] <= centres[nearest] - frame_times
        nearest = np.where(closer_left, nearest - 1, nearest)
    return values[nearest], names


def window_bounds(
    num_steps: int,
    step_seconds: float,
    num_frames: int,
    hop_seconds: float,
    window_seconds: float,
    shift_seconds: float,
    alignment: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Frame ranges [start, end) of the statistics window used by each label step.

    Windows sit on a shift grid (multiples of shift_seconds). "centred": step t uses the window
    centred on the shift point nearest t (look-ahead ≤ window/2 + shift/2). "causal": the window
    ending at the latest shift point ≤ t (no look-ahead beyond half a short frame). Windows are
    cut at the session borders (statistics over the frames that exist, at least one).

    Returns:
      (start [T], end [T]) int64 frame indices.
    """
    shift = max(1, int(round(shift_seconds / hop_seconds)))
    length = max(1, int(round(window_seconds / hop_seconds)))
    centre = np.rint(np.arange(num_steps) * (step_seconds / hop_seconds)).astype(np.int64)
    if alignment == "centred":
        anchor = np.floor(centre / shift + 0.5).astype(np.int64) * shift
        start = anchor - length // 2
    elif alignment == "causal":
        anchor = (centre // shift) * shift
        start = anchor + 1 - length
    else:
        raise ValueError(f"unknown features.alignment {alignment!r}: 'centred' or 'causal'")
    end = start + length
    start = np.clip(start, 0, num_frames - 1)
    end = np.clip(end, start + 1, num_frames)
    return start, end


def window_statistics(
    values: np.ndarray, start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of values[start:end] per window (running sums, O(F + W)).

    Args:
      values: [F, d] frame-level descriptors.
      start, end: [W] frame ranges (end > start).

    Returns:
      (mean [W, d], std [W, d]) float64.
    """
    values = np.asarray(values, np.float64)
    offset = values.mean(axis=0) if values.shape[0] else 0.0
    centred = values - offset  # Keeps the running sums well conditioned.
    zero = np.zeros((1, values.shape[1]))
    first = np.concatenate([zero, np.cumsum(centred, axis=0)])
    second = np.concatenate([zero, np.cumsum(np.square(centred), axis=0)])
    count = (end - start)[:, None].astype(np.float64)
    mean = (first[end] - first[start]) / count
    variance = (second[end] - second[start]) / count - np.square(mean)
    return mean + offset, np.sqrt(np.maximum(variance, 0.0))


def speech_pooled(
    table: np.ndarray,
    weights: np.ndarray,
    window_steps: int,
    alignment: str = "causal",
    floor: float = SPEECH_POOL_FLOOR,
) -> tuple[np.ndarray, np.ndarray]:
    """Speech-weighted moving average of each feature column over `window_steps` label steps.

    Not in the paper (issue 9): each step also sees its features averaged over the last few
    seconds of the subject's own speech, so that pauses, digital silence and a distant second
    speaker (all with speech energy m ~ 0) neither dilute nor replace what the voice said, and
    the reading lasts through the gap. Weight of step s: m_s + `floor`, so that a window without
    speech gets the plain average of its (silent) steps -- a defined, continuous value -- and any
    speech dominates it. "causal": steps t - W + 1 .. t (the raters' labels lag the signal by
    1-3 s, so the past is where the label's evidence is); "centred": t - W // 2 .. t + W - W // 2
    - 1. Windows are cut at the session borders.

    Args:
      table: [T, D] features on the label grid.
      weights: [T] speech energy m in [0, 1] (Eq. 31's tag).
      window_steps: W >= 1.
      alignment: "causal" or "centred".

    Returns:
      (pooled [T, D] float32, speech share [T] float32: the mean of m over the window).
    """
    if window_steps < 1:
        raise ValueError(f"window_steps must be >= 1, got {window_steps}")
    table = np.asarray(table, np.float64)
    m = np.clip(np.asarray(weights, np.float64), 0.0, 1.0)
    steps = table.shape[0]
    index = np.arange(steps)
    if alignment == "causal":
        start = index - window_steps + 1
    elif alignment == "centred":
        start = index - window_steps // 2
    else:
        raise ValueError(f"unknown speech pooling alignment {alignment!r}: 'causal' or 'centred'")
    end = np.clip(start + window_steps, 0, steps)
    start = np.clip(start, 0, steps)
    w = m + floor
    offset = table.mean(axis=0) if steps else 0.0  # keeps the running sums well conditioned
    zero = np.zeros((1, table.shape[1]))
    weighted = np.concatenate([zero, np.cumsum(w[:, None] * (table - offset), axis=0)])
    total = np.concatenate([[0.0], np.cumsum(w)])
    speech = np.concatenate([[0.0], np.cumsum(m)])
    mass = total[end] - total[start]
    pooled = (weighted[end] - weighted[start]) / mass[:, None] + offset
    share = (speech[end] - speech[start]) / np.maximum(end - start, 1)
    return pooled.astype(np.float32), share.astype(np.float32)


def beat_histogram(
    envelope: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    hop_seconds: float,
    bins: int = 8,
    min_period_seconds: float = 0.25,
    max_period_seconds: float = 1.5,
) -> np.ndarray:
    """Beat histogram: strength of rhythm periods from the RMS-envelope autocorrelation [25].

    Per window, the RMS envelope (mean removed) is autocorrelated (FFT); the autocorrelation,
    normalised by lag 0 and clipped at 0, is averaged in `bins` log-spaced bands of periods
    between min_period_seconds and max_period_seconds. A flat (or silent) window gives zeros.

    Returns:
      [W, bins] float64 in [0, 1].
    """
    length = int((end - start).max()) if start.size else 1
    index = start[:, None] + np.arange(length)
    valid = index < end[:, None]
    windows = np.where(valid, envelope[np.minimum(index, envelope.size - 1)], 0.0)
    counts = valid.sum(axis=1, keepdims=True)
    windows = np.where(valid, windows - windows.sum(axis=1, keepdims=True) / counts, 0.0)
    n_fft = 1 << int(np.ceil(np.log2(2 * length)))
    spectrum = scipy.fft.rfft(windows, n=n_fft, axis=1, workers=1)
    autocorr = scipy.fft.irfft(np.square(np.abs(spectrum)), n=n_fft, axis=1, workers=1)[:, :length]
    lag0 = autocorr[:, :1]
    normalised = np.divide(autocorr, lag0, out=np.zeros_like(autocorr), where=lag0 > 1e-20)
    normalised = np.clip(normalised, 0.0, 1.0)
    edges = np.geomspace(min_period_seconds, max_period_seconds, bins + 1) / hop_seconds
    edges = np.rint(edges).astype(np.int64)
    histogram = np.zeros((windows.shape[0], bins))
    for b in range(bins):
        lo = int(edges[b])
        hi = max(int(edges[b + 1]), lo + 1)
        if lo < length:
            histogram[:, b] = normalised[:, lo : min(hi, length)].mean(axis=1)
    return histogram


def grid_features(
    signal: np.ndarray,
    analysis: FrameAnalysis,
    frame_mask: np.ndarray,
    num_steps: int,
    step_seconds: float,
    cfg: ml_collections.ConfigDict,
) -> tuple[np.ndarray, list[str]]:
    """The audio feature matrix on the label grid (Step 5): one row per label step.

    Columns: for each frame-level descriptor (openSMILE LLDs, MFCC c1…, spectral centroid,
    spectral flux, energy in dB, ZCR) its mean and std over the step's window; the beat
    histogram of the window; the pause duration (share of silent frames) of the window.

    Args:
      signal: [n] 16 kHz samples (for openSMILE).
      analysis: the frames of `analyse_frames`.
      frame_mask: [F] speech mask of the frames.
      num_steps: T.
      step_seconds: label hop.
      cfg: the audio config.

    Returns:
      ([T, D] float32, D names).
    """
    fcfg = cfg.features
    count = analysis.num_frames
    columns = [analysis.mfcc, analysis.centroid, analysis.flux, analysis.energy_db, analysis.zcr]
    names = [f"mfcc{i}" for i in range(1, fcfg.n_mfcc + 1)]
    names += ["spectral_centroid", "spectral_flux", "energy_db", "zcr"]
    if fcfg.opensmile_set != "none":
        times = np.arange(count) * analysis.hop_seconds
        llds, lld_names = opensmile_llds(signal, cfg.sample_rate, fcfg.opensmile_set, times)
        columns.insert(0, llds)
        names = lld_names + names
    elif fcfg.opensmile_set not in OPENSMILE_SETS:
        raise ValueError(f"unknown features.opensmile_set {fcfg.opensmile_set!r}")
    frame_values = np.concatenate([np.reshape(c, (count, -1)) for c in columns], axis=1)

    start, end = window_bounds(
        num_steps,
        step_seconds,
        count,
        analysis.hop_seconds,
        fcfg.window_seconds,
        fcfg.shift_seconds,
        fcfg.alignment,
    )
    # Steps sharing a window (1 s shift: 25 steps each) are computed once.
    keys, first_step, which = np.unique(
        start * (count + 1) + end, return_index=True, return_inverse=True
    )
    del keys
    w_start, w_end = start[first_step], end[first_step]
    mean, std = window_statistics(frame_values, w_start, w_end)
    # Autocorrelation is normalised by lag 0, so √E (∝ RMS) serves as the RMS envelope.
    beats = beat_histogram(
        np.sqrt(analysis.energy),
        w_start,
        w_end,
        analysis.hop_seconds,
        fcfg.beat_bins,
        fcfg.beat_min_period_seconds,
        fcfg.beat_max_period_seconds,
    )
    silent = np.concatenate([[0], np.cumsum(~np.asarray(frame_mask, bool))])
    pause = (silent[w_end] - silent[w_start]) / (w_end - w_start)
    table = np.concatenate([mean, std, beats, pause[:, None]], axis=1)[which.reshape(-1)]
    all_names = [f"{n}_mean" for n in names] + [f"{n}_std" for n in names]
    all_names += [f"beat_histogram{b}" for b in range(fcfg.beat_bins)] + ["pause_duration"]
    return table.astype(np.float32), all_names
