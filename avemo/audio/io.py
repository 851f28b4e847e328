"""Loading audio for the front end: any file or array → 16 kHz mono, 16-bit quantised (Step 1).

WAV/FLAC/OGG … are read with libsndfile (`soundfile`); the audio track of a video (mp4/avi/mkv)
with FFmpeg (`av`). Resampling uses soxr. Every failure becomes an `AudioError` naming the file.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import soundfile
import soxr

from avemo.audio.errors import AudioError

# Containers read with FFmpeg first (libsndfile cannot read them).
VIDEO_SUFFIXES = frozenset({".mp4", ".m4a", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg"})
_INT16_SCALE = 32768.0


def load(
    path: str | os.PathLike,
    sample_rate: int = 16000,
    *,
    resample_quality: str = "HQ",
    clip_level: float = 0.999,
    max_clipped_fraction: float = 0.01,
) -> np.ndarray:
    """Loads an audio file (or a video's audio track) as 16 kHz mono 16-bit samples (Step 1).

    Args:
      path: wav/flac/… or mp4/avi/mkv file.
      sample_rate: target rate in Hz.
      resample_quality: soxr quality recipe.
      clip_level: |x| at or above this counts as a clipped sample.
      max_clipped_fraction: more clipped samples than this share is an error.

    Returns:
      float32 samples in [-1, 1), values on the 16-bit grid (k / 32768), time 0 = start of file
      (for videos: start of the container, so that audio stays aligned with the video frames).

    Raises:
      AudioError: missing, empty, truncated or undecodable file, no audio track, no samples,
        non-finite samples, or heavy clipping.
    """
    name = str(path)
    path = Path(path)
    if not path.is_file():
        raise AudioError(name, "no such file")
    if path.stat().st_size == 0:
        raise AudioError(name, "file is empty (0 bytes)")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        signal, rate = _decode_with_av(path)
    else:
        _check_riff_size(path)  # Before any decoder: FFmpeg would read a cut WAV silently too.
        try:
            signal, rate = _decode_with_soundfile(path)
        except AudioError as sndfile_error:
            # Not something libsndfile knows: try FFmpeg before giving up.
            try:
                signal, rate = _decode_with_av(path)
            except AudioError as av_error:
                raise AudioError(
                    name,
                    f"not a readable audio file ({sndfile_error.problem}; {av_error.problem})",
                ) from None
    return prepare(
        signal,
        rate,
        sample_rate,
        name=name,
        resample_quality=resample_quality,
        clip_level=clip_level,
        max_clipped_fraction=max_clipped_fraction,
    )


def prepare(
    signal: np.ndarray,
    rate: float,
    sample_rate: int = 16000,
    *,
    name: str = "<array>",
    resample_quality: str = "HQ",
    clip_level: float = 0.999,
    max_clipped_fraction: float = 0.01,
) -> np.ndarray:
    """Checks a decoded signal and converts it to `sample_rate` mono 16-bit (Step 1).

    Args:
      signal: [n] or [n, channels] samples, full scale ±1.
      rate: its sample rate in Hz.
      sample_rate: target rate.
      name: how the source is named in errors.
      resample_quality, clip_level, max_clipped_fraction: see `load`.

    Returns:
      float32 [n'] samples on the 16-bit grid.
    """
    signal = np.asarray(signal)
    if signal.ndim == 1:
        signal = signal[:, None]
    if signal.ndim != 2:
        raise AudioError(name, f"expected samples [n] or [n, channels], got shape {signal.shape}")
    if not np.issubdtype(signal.dtype, np.number):
        raise AudioError(name, f"samples are not numbers (dtype {signal.dtype})")
    if np.issubdtype(signal.dtype, np.integer):
        info = np.iinfo(signal.dtype)
        signal = signal.astype(np.float64) / (float(info.max) + 1.0)
    if signal.shape[0] == 0 or signal.shape[1] == 0:
        raise AudioError(name, "contains no audio samples")
    if not np.isfinite(rate) or rate <= 0:
        raise AudioError(name, f"invalid sample rate {rate}")
    finite = np.isfinite(signal)
    if not finite.all():
        bad = int(signal.size - np.count_nonzero(finite))
        raise AudioError(name, f"{bad} of {signal.size} samples are NaN or infinite")
    clipped = float(np.mean(np.abs(signal) >= clip_level))
    if clipped > max_clipped_fraction:
        raise AudioError(
            name,
            f"clipped: {100 * clipped:.2f}% of samples at full scale "
            f"(limit {100 * max_clipped_fraction:.2f}%)",
        )
    mono = signal.mean(axis=1, dtype=np.float64)
    if round(rate) != sample_rate or abs(rate - round(rate)) > 1e-6:
        mono = soxr.resample(mono, rate, sample_rate, quality=resample_quality)
    return quantize_16bit(mono)


def quantize_16bit(signal: np.ndarray) -> np.ndarray:
    """Rounds samples to the 16-bit grid k / 32768, k in [-32768, 32767] (Step 1)."""
    levels = np.clip(np.rint(np.asarray(signal, np.float64) * _INT16_SCALE), -32768, 32767)
    return (levels / _INT16_SCALE).astype(np.float32)


def _decode_with_soundfile(path: Path) -> tuple[np.ndarray, float]:
    name = str(path)
    try:
        signal, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError) as error:
        raise AudioError(name, f"libsndfile cannot decode it: {error}") from None
    return signal, float(rate)


def _check_riff_size(path: Path) -> None:
    """Rejects a RIFF/WAVE file shorter than its header says (cut off while copying)."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    declared = struct.unpack("<I", head[4:8])[0] + 8
    actual = path.stat().st_size
    # 0 and 0xFFFFFFFF mean "unknown" (streamed writers); only a plausible size is checked.
    if 8 < declared < 0xFFFFFFFF and actual < declared:
        raise AudioError(
            str(path), f"truncated: the header declares {declared} bytes, the file has {actual}"
        )


def _decode_with_av(path: Path) -> tuple[np.ndarray, float]:
    """Decodes the first audio stream with FFmpeg; leading silence keeps container time 0."""
    import av  # Imported here: only needed for containers.

    name = str(path)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise AudioError(name, f"FFmpeg cannot open it: {error}") from None
    with container:
        if not container.streams.audio:
            raise AudioError(name, "has no audio track")
        stream = container.streams.audio[0]
        rate = stream.rate or stream.codec_context.sample_rate
        if not rate:
            raise AudioError(name, "audio track has no sample rate")
        # Planar float keeps every channel; the mix-down and resampling are ours (soxr).
        resampler = av.AudioResampler(format="fltp", rate=rate)
        chunks: list[np.ndarray] = []
        first_time: float | None = None
        try:
            for frame in container.decode(stream):
                if first_time is None and frame.pts is not None and frame.time_base is not None:
                    first_time = float(frame.pts * frame.time_base)
                for converted in resampler.resample(frame):
                    chunks.append(converted.to_ndarray())
            for converted in resampler.resample(None):
                chunks.append(converted.to_ndarray())
        except (av.error.FFmpegError, ValueError) as error:
            raise AudioError(name, f"audio track cannot be decoded: {error}") from None
    if not chunks:
        raise AudioError(name, "audio track contains no samples")
    signal = np.concatenate(chunks, axis=1).T.astype(np.float64)  # [n, channels]
    start = container_start_offset(first_time, rate)
    if start > 0:
        signal = np.concatenate([np.zeros((start, signal.shape[1])), signal])
    elif start < 0:
        signal = signal[-start:]
    return signal, float(rate)


def container_start_offset(first_time: float | None, rate: float) -> int:
    """Samples to prepend (>0) or drop (<0) so that sample 0 sits at container time 0."""
    if first_time is None or not np.isfinite(first_time):
        return 0
    return int(round(first_time * rate))
