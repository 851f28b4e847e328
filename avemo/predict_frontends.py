"""Streaming front ends for prediction (new recording → bounded-memory model inputs).

Two tasks per recording, each runnable in its own worker process so that both cores are used:

- `video_task`: decode (PyAV, container clock) → Haar detection on the frames of the 40 ms grid
  only (tracking, downscaled) → smoothing → crops, written to a raw file step by step
  (`faces.u8`, [T, S, S, C] uint8), so memory does not grow with the video's length.
- `audio_task`: the video's own track (or a separate file) → 16 kHz mono (streamed, placed at
  the frames' own timestamps) → `avemo.audio.frontend.extract_long` in 5-minute chunks.

Imperfect input gives a result and notes rather than a refusal where a result is defined:
clipped audio (the share is reported; training still refuses it, `audio.max_clipped_fraction`),
a missing or undecodable audio track (features of silence, m = 0: the model sees the face only,
the paper's §5.2 case), short or silent audio (silence), a video shorter than its container says
(padded with face_present = 0), no face anywhere. What cannot be predicted (no decodable frame,
an unreadable file, an unreadable `--audio` file) raises `AudioError`/`VideoError` naming it.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import pathlib
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

FACES_FILE = "faces.u8"
_FLUSH_STEPS = 500  # crops buffered before they are appended to the faces file
_PROGRESS_STEPS = 250  # report video progress every this many steps (10 s of media)
AUDIO_CHUNK_SECONDS = 300.0
AUDIO_MARGIN_SECONDS = 10.0
# Video segments for parallel workers: about this long (steps; 2 minutes: short enough that
# the workers run out of work at about the same time, measured 40.2 -> see docs/predict.md),
# each decoded from this many steps before its start (1 s: the tracker starts with a full
# search, and the smoother's 6-step look-back has settled by then).
SEGMENT_STEPS = 3000
SEGMENT_OVERLAP_STEPS = 25

Report = Callable[[str, float], None]  # (stage, seconds of media done)


@dataclasses.dataclass(frozen=True)
class Job:
    """One recording to predict, as the worker processes see it (picklable)."""

    name: str
    video_path: str
    audio_path: str | None
    num_steps: int
    step_seconds: float
    tmp_dir: str
    config_json: str
    video_seconds: float  # the video stream's end on the container clock


def _config(job: Job):
    import json

    import ml_collections

    return ml_collections.ConfigDict(json.loads(job.config_json))


def _notes_from(caught: list[warnings.WarningMessage], path: str) -> list[str]:
    notes = []
    for w in caught:
        text = str(w.message).removeprefix(f"{path}: ")
        if "no face detected" in text:
            continue  # the face share says it
        notes.append(text)
    return notes


def crop_shape(job: Job) -> tuple[int, int, int]:
    cfg = _config(job).video
    return (cfg.crop_size, cfg.crop_size, 1 if cfg.color_mode == "gray" else 3)


def allocate_faces(job: Job) -> pathlib.Path:
    """The (sparse) faces file of all T steps, which video segments fill at their offsets."""
    path = pathlib.Path(job.tmp_dir) / FACES_FILE
    with open(path, "wb") as f:
        f.truncate(job.num_steps * int(np.prod(crop_shape(job))))
    return path


def segments(num_steps: int, segment_steps: int) -> list[tuple[int, int]]:
    """[first, stop) step ranges of about `segment_steps` covering the grid."""
    count = max(1, round(num_steps / max(segment_steps, 1)))
    bounds = np.linspace(0, num_steps, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def video_task(
    job: Job, report: Report | None = None, segment: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Face crops of steps [first, stop) (default: all) into `job.tmp_dir/faces.u8` (allocated
    by `allocate_faces`); returns face_present of those steps, notes and timings.

    A segment that does not start at 0 is decoded from `SEGMENT_OVERLAP_STEPS` earlier (after a
    seek), so that tracking and smoothing have settled when its own steps begin.
    """
    from avemo.video import frontend, io
    from avemo.video.errors import VideoError

    cfg = _config(job).video
    started, cpu = time.perf_counter(), time.process_time()
    first, stop = segment or (0, job.num_steps)
    face_present = np.zeros(stop - first, np.float32)
    buffer = np.zeros((_FLUSH_STEPS,) + crop_shape(job), np.uint8)
    clock: dict[str, float] = {}
    filled = 0
    path = pathlib.Path(job.tmp_dir) / FACES_FILE
    if not path.exists():
        allocate_faces(job)
    with warnings.catch_warnings(record=True) as caught, open(path, "r+b") as faces_file:
        warnings.simplefilter("always")
        faces_file.seek(first * buffer[0].nbytes)
        info = io.probe(job.video_path)
        steps = frontend.iter_steps(
            job.video_path,
            job.num_steps,
            cfg,
            step_seconds=job.step_seconds,
            max_missing_tail_seconds=math.inf,
            start_step=max(first - SEGMENT_OVERLAP_STEPS, 0),
            stop_step=stop,
            timings=clock,
        )
        try:
            steps = list_or_stream(steps, first)
        except VideoError as error:
            if first == 0 or "no decodable frames" not in error.problem:
                raise
            # A segment past the real end of a video whose container overstates its length.
            steps = iter([(step, None, None) for step in range(first, stop)])
            message = f"no frames after {first * job.step_seconds:.1f} s; face_present = 0"
            warnings.warn(message, stacklevel=2)
        for step, crop, _ in steps:
            if step < first:
                continue
            if crop is not None:
                buffer[filled] = crop.reshape(buffer.shape[1:])
                face_present[step - first] = 1.0
            else:
                buffer[filled] = 0
            filled += 1
            if filled == _FLUSH_STEPS:
                faces_file.write(buffer.tobytes())
                filled = 0
            if report is not None and (step + 1 - first) % _PROGRESS_STEPS == 0:
                report(f"video:{first}", (step + 1 - first) * job.step_seconds)
        faces_file.write(buffer[:filled].tobytes())
    notes = _notes_from(caught, job.video_path)
    if info.rotation and first == 0:
        notes.append(f"video rotated by {info.rotation}° (display matrix); frames turned upright")
    if report is not None:
        report(f"video:{first}", (stop - first) * job.step_seconds)
    total = time.perf_counter() - started
    detect, crop = clock.get("detect", 0.0), clock.get("crop", 0.0)
    return {
        "segment": (first, stop),
        "face_present": face_present,
        "notes": notes,
        "seconds": {
            "video": total,
            "video_detect": detect,
            "video_crop": crop,
            "video_decode_other": total - detect - crop,
        },
        "cpu_seconds": {"video": time.process_time() - cpu},
    }


def list_or_stream(steps: Iterator, first: int) -> Iterator:
    """`steps` with its first item fetched now, so that a segment without frames fails here."""
    head = next(steps, None)
    if head is None:
        return iter(())
    return itertools.chain([head], steps)


def merge_video(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One video result from its segments' results (steps in order, notes once, times summed)."""
    parts = sorted(parts, key=lambda p: p["segment"][0])
    notes: list[str] = []
    for part in parts:
        notes += [n for n in part["notes"] if n not in notes]
    return {
        "face_present": np.concatenate([p["face_present"] for p in parts]),
        "notes": notes,
        "seconds": {k: sum(p["seconds"][k] for p in parts) for k in parts[0]["seconds"]},
        "cpu_seconds": {"video": sum(p["cpu_seconds"]["video"] for p in parts)},
    }


def audio_task(job: Job, report: Report | None = None) -> dict[str, Any]:
    """Audio features on the grid (chunked); a missing/unusable own track gives silence + note.

    Raises:
      AudioError: a separate `--audio` file that cannot be used.
    """
    from avemo.audio import frontend, io
    from avemo.audio.errors import AudioError

    config = _config(job)
    cfg = config.audio
    cfg.max_clipped_fraction = 1.0  # prediction reports clipping instead of refusing
    keep_logmel = bool(config.model.audio_cnn.enabled)
    started, cpu = time.perf_counter(), time.process_time()
    load_report = io.LoadReport()
    notes: list[str] = []
    source: Any = job.audio_path or job.video_path
    silent = False
    if job.audio_path is None and not io.has_audio_track(job.video_path):
        notes.append("no audio track: features of silence, m = 0 (face only)")
        silent = True
    progress = None if report is None else (lambda seconds: report("audio", seconds))

    def extract(signal, report=None):
        return frontend.extract_long(
            signal,
            job.num_steps,
            cfg,
            job.step_seconds,
            chunk_seconds=AUDIO_CHUNK_SECONDS,
            margin_seconds=AUDIO_MARGIN_SECONDS,
            keep_logmel=keep_logmel,
            report=report,
            progress=progress,
        )

    out = None
    if not silent:
        try:
            out = extract(source, load_report)
        except AudioError as error:
            if job.audio_path is not None:
                raise
            notes.append(f"audio track unusable ({error.problem}): features of silence, m = 0")
            silent = True
    if silent:
        samples = int(math.ceil((job.num_steps - 1) * job.step_seconds * cfg.sample_rate)) + 1
        out = extract((np.zeros(samples, np.float32), cfg.sample_rate))
        out["speech_energy"] = np.zeros(job.num_steps, np.float32)
    else:
        notes += _audio_notes(load_report, cfg, job)
    speech_share = float(np.mean(out["speech_mask"]))
    if not silent and speech_share < 0.01:
        notes.append("no speech found in the audio (silent or too quiet)")
    out.pop("speech_mask")
    return {
        "arrays": out,
        "notes": notes,
        "silent": silent,
        "speech_share": speech_share,
        "clipped_share": load_report.clipped_fraction,
        "seconds": {"audio": time.perf_counter() - started},
        "cpu_seconds": {"audio": time.process_time() - cpu},
    }


def _audio_notes(report, cfg, job: Job) -> list[str]:
    notes = []
    if report.clipped_fraction >= 0.001:  # a few full-scale peaks are normal
        notes.append(f"{100 * report.clipped_fraction:.1f} % of audio clipped")
    if report.gaps:
        notes.append(
            f"{report.gaps} gap(s) in the audio track ({report.gap_seconds:.2f} s) "
            "filled with silence"
        )
    if report.loudest_channel_share > 0.01:
        notes.append(
            f"stereo mix-down took the louder channel in {100 * report.loudest_channel_share:.0f}"
            " % of blocks (anti-phase or one-sided channels)"
        )
    audio_seconds = report.samples / cfg.sample_rate
    grid_seconds = (job.num_steps - 1) * job.step_seconds
    if audio_seconds < grid_seconds - 1.0:
        notes.append(
            f"audio lasts {audio_seconds:.1f} s of {grid_seconds:.1f} s: the rest is silence"
        )
    elif audio_seconds > job.video_seconds + 1.0:
        notes.append(
            f"audio lasts {audio_seconds:.1f} s, the video {job.video_seconds:.1f} s: "
            "audio past the video is ignored"
        )
    return notes


# --------------------------------------------------------------------- worker-process plumbing

_QUEUE = None


def worker_init(queue) -> None:
    """Pool initializer: Ctrl-C is the parent's business; progress goes through `queue`."""
    import signal

    global _QUEUE
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _QUEUE = queue
    logging.getLogger().setLevel(logging.ERROR)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2

    # One core per worker: the pool is the parallelism. OpenCV's own threads in each worker
    # would oversubscribe the cores (Haar detection on tiny regions gains nothing from them).
    cv2.setNumThreads(1)


def _queue_report(name: str) -> Report | None:
    if _QUEUE is None:
        return None
    return lambda stage, seconds: _QUEUE.put((name, stage, seconds))


def run_in_worker(kind: str, job: Job, segment: tuple[int, int] | None = None) -> dict[str, Any]:
    """Entry point of a pool worker: `kind` is "video" (a segment) or "audio"."""
    if kind == "video":
        return video_task(job, _queue_report(job.name), segment)
    return audio_task(job, _queue_report(job.name))


class StepFile:
    """A raw [T, ...] uint8 file read by step ranges (`faces.u8`): array[start:stop] reads only
    those steps, so the model's windows never bring the whole video into memory."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...]):
        self.path = os.fspath(path)
        self.shape = tuple(shape)
        self.dtype = np.dtype(np.uint8)
        self._step_bytes = int(np.prod(self.shape[1:]))
        size = os.path.getsize(self.path)
        if size != self.shape[0] * self._step_bytes:
            raise ValueError(f"{self.path}: {size} bytes, expected {self.shape[0]} steps")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("StepFile supports contiguous slices only")
        start, stop, _ = index.indices(self.shape[0])
        count = max(stop - start, 0)
        with open(self.path, "rb") as f:
            f.seek(start * self._step_bytes)
            data = np.fromfile(f, np.uint8, count * self._step_bytes)
        return data.reshape((count,) + self.shape[1:])
