"""Loading audio for the front end: any file or array → 16 kHz mono, 16-bit quantised (Step 1).

WAV/FLAC/OGG … are read with libsndfile (`soundfile`); the audio track of a video (mp4/avi/mkv/ts)
with FFmpeg (`av`). Both are read in blocks and converted on the fly (mix-down, soxr resampling),
so a long recording never exists in memory at its source rate and channel count. Every failure
becomes an `AudioError` naming the file.

One clock (as `avemo.video.io`): a video's audio is placed on the container clock, origin = the
container's start time; every decoded audio frame sits at its own timestamp: a late start is
padded with silence, a gap between frames (dropped packets) is filled with silence, an overlap
keeps the samples already placed.

Mix-down of several channels, per 20 ms block: the channel mean, unless the mean has less than
half the power of the loudest channel in that block (anti-phase channels cancel, a one-sided
recording loses 6 dB in the mean), in which case the loudest channel. Identical channels thus
give the channel itself, and the absolute level that the speech energy m reads (dB re full scale)
stays that of the recorded voice.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile
import soxr

from avemo.audio.errors import AudioError

# Containers read with FFmpeg first (libsndfile cannot read them).
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4a", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".mts"}
)
_INT16_SCALE = 32768.0
DOWNMIX_BLOCK_SECONDS = 0.02
# Frames whose timestamp is further than this from where the previous frame ended open a gap
# (filled with silence) or overlap (the overlapping part is dropped); closer ones are joined.
GAP_TOLERANCE_SECONDS = 0.005
_READ_BLOCK_SECONDS = 10.0


@dataclasses.dataclass
class LoadReport:
    """What loading found: shares of problems a prediction reports instead of refusing."""

    source_rate: float = 0.0
    channels: int = 0
    samples: int = 0  # at the target rate, after placement
    clipped_fraction: float = 0.0
    start_seconds: float = 0.0  # first audio sample on the container clock
    gaps: int = 0
    gap_seconds: float = 0.0
    overlap_seconds: float = 0.0
    loudest_channel_share: float = 0.0  # share of mix-down blocks that took the loudest channel
    _clipped: int = 0
    _counted: int = 0
    _blocks: int = 0
    _loudest_blocks: int = 0


def downmix(signal: np.ndarray, rate: float, report: LoadReport | None = None) -> np.ndarray:
    """[n, C] → [n]: per 20 ms block the channel mean, or the loudest channel where the mean has
    less than half its power (see the module docstring)."""
    if signal.shape[1] == 1:
        return signal[:, 0]
    block = max(1, int(round(DOWNMIX_BLOCK_SECONDS * rate)))
    n, channels = signal.shape
    mono = signal.mean(axis=1)
    blocks = -(-n // block)
    pad = blocks * block - n
    padded = np.pad(signal, ((0, pad), (0, 0))) if pad else signal
    power = np.square(padded).reshape(blocks, block, channels).sum(axis=1)  # [blocks, C]
    mean_power = np.square(np.pad(mono, (0, pad)) if pad else mono).reshape(blocks, block).sum(1)
    loudest = power.argmax(axis=1)
    use_loudest = mean_power < 0.5 * power.max(axis=1)
    if use_loudest.any():
        chosen = np.repeat(np.where(use_loudest, loudest, -1), block)[:n]
        rows = np.flatnonzero(chosen >= 0)
        mono[rows] = signal[rows, chosen[rows]]
    if report is not None:
        report._blocks += blocks
        report._loudest_blocks += int(use_loudest.sum())
    return mono


class _Assembler:
    """Places timed source blocks on one clock: checks, mixes down, fills gaps, resamples."""

    def __init__(
        self, name: str, target_rate: int, quality: str, clip_level: float, report: LoadReport
    ):
        self.name, self.target_rate, self.quality = name, target_rate, quality
        self.clip_level, self.report = clip_level, report
        self.rate: float | None = None
        self.resampler = None
        self.chunks: list[np.ndarray] = []
        self.next_time: float | None = None  # where the samples placed so far end (seconds)

    def _emit(self, mono: np.ndarray, last: bool = False) -> None:
        if self.resampler is not None:
            mono = self.resampler.resample_chunk(mono, last=last)
        if mono.size:
            self.chunks.append(quantize_16bit(mono))

    def add(self, block: np.ndarray, rate: float, time: float | None) -> None:
        """Source samples [n, C] (full scale ±1) at `rate`; `time` on the clock (None: joined)."""
        first = False
        if self.rate is None:
            if not np.isfinite(rate) or rate <= 0:
                raise AudioError(self.name, f"invalid sample rate {rate}")
            self.rate = float(rate)
            self.report.source_rate, self.report.channels = self.rate, block.shape[1]
            if round(rate) != self.target_rate or abs(rate - round(rate)) > 1e-6:
                self.resampler = soxr.ResampleStream(
                    self.rate, self.target_rate, 1, dtype="float64", quality=self.quality
                )
            start = 0.0 if time is None else time
            self.report.start_seconds = start
            if start > 0:
                self.chunks.append(np.zeros(int(round(start * self.target_rate)), np.float32))
            self.next_time = max(start, 0.0)
            first = True
        elif block.shape[1] != self.report.channels:
            raise AudioError(self.name, "the number of audio channels changes within the file")
        finite = np.isfinite(block)
        if not finite.all():
            bad = int(block.size - np.count_nonzero(finite))
            raise AudioError(self.name, f"{bad} of {block.size} samples are NaN or infinite")
        self.report._clipped += int(np.count_nonzero(np.abs(block) >= self.clip_level))
        self.report._counted += block.size
        if time is not None:
            delta = time - self.next_time
            if delta > GAP_TOLERANCE_SECONDS:
                self.report.gaps += 1
                self.report.gap_seconds += delta
                self._emit(np.zeros(int(round(delta * self.rate))))
                self.next_time = time
            elif delta < -GAP_TOLERANCE_SECONDS or (first and delta < 0):
                drop = int(round(-delta * self.rate))
                self.report.overlap_seconds += min(drop, block.shape[0]) / self.rate
                block = block[drop:]
        if block.shape[0] == 0:
            return
        self._emit(downmix(block, self.rate, self.report))
        self.next_time += block.shape[0] / self.rate

    def finish(self) -> np.ndarray:
        if self.rate is None:
            raise AudioError(self.name, "contains no audio samples")
        if self.resampler is not None:
            self._emit(np.zeros(0), last=True)
        report = self.report
        report.clipped_fraction = report._clipped / max(report._counted, 1)
        report.loudest_channel_share = report._loudest_blocks / max(report._blocks, 1)
        signal = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        self.chunks = []
        report.samples = int(signal.size)
        if report._counted == 0:
            raise AudioError(self.name, "contains no audio samples")
        return signal


def _check_clipping(name: str, report: LoadReport, max_clipped_fraction: float) -> None:
    if report.clipped_fraction > max_clipped_fraction:
        raise AudioError(
            name,
            f"clipped: {100 * report.clipped_fraction:.2f}% of samples at full scale "
            f"(limit {100 * max_clipped_fraction:.2f}%)",
        )


def load(
    path: str | os.PathLike,
    sample_rate: int = 16000,
    *,
    resample_quality: str = "HQ",
    clip_level: float = 0.999,
    max_clipped_fraction: float = 0.01,
    report: LoadReport | None = None,
) -> np.ndarray:
    """Loads an audio file (or a video's audio track) as 16 kHz mono 16-bit samples (Step 1).

    Args:
      path: wav/flac/… or mp4/avi/mkv/ts file.
      sample_rate: target rate in Hz.
      resample_quality: soxr quality recipe.
      clip_level: |x| at or above this counts as a clipped sample.
      max_clipped_fraction: more clipped samples than this share is an error (1.0: never).
      report: filled with what loading found (clipped share, gaps, mix-down), if given.

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
    report = LoadReport() if report is None else report
    if path.suffix.lower() in VIDEO_SUFFIXES:
        signal = _assemble(
            name, _blocks_with_av(path), sample_rate, resample_quality, clip_level, report
        )
    else:
        _check_riff_size(path)  # Before any decoder: FFmpeg would read a cut WAV silently too.
        try:
            signal = _assemble(
                name,
                _blocks_with_soundfile(path),
                sample_rate,
                resample_quality,
                clip_level,
                report,
            )
        except AudioError as sndfile_error:
            if not sndfile_error.problem.startswith("libsndfile"):
                raise
            # Not something libsndfile knows: try FFmpeg before giving up.
            report = dataclasses.replace(LoadReport())
            try:
                signal = _assemble(
                    name, _blocks_with_av(path), sample_rate, resample_quality, clip_level, report
                )
            except AudioError as av_error:
                raise AudioError(
                    name,
                    f"not a readable audio file ({sndfile_error.problem}; {av_error.problem})",
                ) from None
    _check_clipping(name, report, max_clipped_fraction)
    return signal


def _assemble(name, blocks, sample_rate, quality, clip_level, report) -> np.ndarray:
    assembler = _Assembler(name, sample_rate, quality, clip_level, report)
    for block, rate, time in blocks:
        assembler.add(block, rate, time)
    return assembler.finish()


def prepare(
    signal: np.ndarray,
    rate: float,
    sample_rate: int = 16000,
    *,
    name: str = "<array>",
    resample_quality: str = "HQ",
    clip_level: float = 0.999,
    max_clipped_fraction: float = 0.01,
    report: LoadReport | None = None,
) -> np.ndarray:
    """Checks a decoded signal and converts it to `sample_rate` mono 16-bit (Step 1).

    Args:
      signal: [n] or [n, channels] samples, full scale ±1 (integers: full scale of their type).
      rate: its sample rate in Hz.
      sample_rate: target rate.
      name: how the source is named in errors.
      resample_quality, clip_level, max_clipped_fraction, report: see `load`.

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
    report = LoadReport() if report is None else report
    out = _assemble(
        name, [(signal.astype(np.float64), rate, None)], sample_rate, resample_quality,
        clip_level, report,
    )  # fmt: skip
    _check_clipping(name, report, max_clipped_fraction)
    return out


def quantize_16bit(signal: np.ndarray) -> np.ndarray:
    """Rounds samples to the 16-bit grid k / 32768, k in [-32768, 32767] (Step 1)."""
    levels = np.clip(np.rint(np.asarray(signal, np.float64) * _INT16_SCALE), -32768, 32767)
    return (levels / _INT16_SCALE).astype(np.float32)


def _blocks_with_soundfile(path: Path) -> Iterator[tuple[np.ndarray, float, None]]:
    name = str(path)
    try:
        with soundfile.SoundFile(str(path)) as f:
            rate = float(f.samplerate)
            size = max(1, int(_READ_BLOCK_SECONDS * rate))
            while True:
                block = f.read(size, dtype="float64", always_2d=True)
                if block.shape[0] == 0:
                    break
                yield block, rate, None
    except (soundfile.SoundFileError, RuntimeError) as error:
        raise AudioError(name, f"libsndfile cannot decode it: {error}") from None


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


def has_audio_track(path: str | os.PathLike) -> bool:
    """Whether FFmpeg finds an audio stream in the file (False when it cannot open it)."""
    import av

    try:
        with av.open(str(path)) as container:
            return bool(container.streams.audio)
    except (av.error.FFmpegError, OSError, ValueError):
        return False


def _blocks_with_av(path: Path) -> Iterator[tuple[np.ndarray, float, float | None]]:
    """Decoded frames of the first audio stream as ([n, C], rate, time on the container clock)."""
    import av  # Imported here: only needed for containers.

    from avemo.video.io import container_origin

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
        origin = container_origin(container)
        # Planar float keeps every channel; the mix-down and resampling are ours (soxr).
        resampler = av.AudioResampler(format="fltp", rate=rate)
        try:
            for frame in container.decode(stream):
                time = None
                if frame.pts is not None and frame.time_base is not None:
                    time = float(frame.pts * frame.time_base) - origin
                for converted in resampler.resample(frame):
                    yield converted.to_ndarray().T.astype(np.float64), float(rate), time
                    time = None
            for converted in resampler.resample(None):
                yield converted.to_ndarray().T.astype(np.float64), float(rate), None
        except (av.error.FFmpegError, ValueError) as error:
            raise AudioError(name, f"audio track cannot be decoded: {error}") from None


def container_start_offset(first_time: float | None, rate: float) -> int:
    """Samples to prepend (>0) or drop (<0) so that sample 0 sits at container time 0."""
    if first_time is None or not np.isfinite(first_time):
        return 0
    return int(round(first_time * rate))
