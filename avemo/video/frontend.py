"""The video front end (raw files → front ends → preparation cache): one face crop per 40 ms step.

`extract` decodes the video once, detects the largest face on the frame of each label step,
smooths the boxes over time and cuts the crops, returning the arrays of docs/contracts.md.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterator

import cv2
import ml_collections
import numpy as np

from avemo.video import faces, io
from avemo.video.errors import VideoError, VideoWarning

DEFAULT_STEP_SECONDS = 0.04


def _check_config(cfg: ml_collections.ConfigDict) -> None:
    if cfg.color_mode not in ("gray", "rgb"):
        raise ValueError(f"config.video.color_mode must be 'gray' or 'rgb', got {cfg.color_mode!r}")
    if cfg.crop_size < 1:
        raise ValueError(f"config.video.crop_size must be positive, got {cfg.crop_size}")
    if cfg.smoothing.window_steps < 1 or cfg.smoothing.window_steps % 2 == 0:
        raise ValueError(
            f"config.video.smoothing.window_steps must be odd, got {cfg.smoothing.window_steps}"
        )
    if cfg.smoothing.max_gap_steps < 0:
        raise ValueError("config.video.smoothing.max_gap_steps must be >= 0")


def num_steps_for(video_path: str | os.PathLike[str], step_seconds: float) -> int:
    """T = floor(duration / step) + 1 for a video without labels (duration from the container)."""
    info = io.probe(video_path)
    if info.duration_seconds <= 0:
        raise VideoError(info.path, "container reports no duration (frame count or fps missing)")
    return math.floor(info.duration_seconds / step_seconds + io.TIME_TOLERANCE_SECONDS) + 1


def extract(
    video_path: str | os.PathLike[str],
    num_steps: int | None,
    cfg: ml_collections.ConfigDict,
    frame_times_path: str | os.PathLike[str] | None = None,
    *,
    step_seconds: float = DEFAULT_STEP_SECONDS,
) -> dict[str, np.ndarray]:
    """Face crops, face flag and boxes on the label grid of a video.

    Args:
      video_path: mp4/avi/mkv/ts/... readable by FFmpeg (PyAV).
      num_steps: T, the number of label steps; None derives it from the container's duration.
      cfg: the video config (`config.video`, see `avemo.video.config.defaults`).
      frame_times_path: RECOLA per-frame times (CSV); None uses the container's timestamps.
      step_seconds: the label hop (`config.data.step_seconds`).

    Returns:
      faces [T, S, S, C] uint8 (zeros where no face), face_present [T] float32 in {0, 1}
      (n of Eq. (31), also the mask), face_boxes [T, 4] float32 x, y, w, h in source pixels
      (NaN where no face).

    Raises:
      VideoError: unusable video or frame-time file, no frames, or a video that ends more
        than `cfg.max_missing_tail_seconds` before the last step. A shorter shortfall is
        padded with face_present = 0 and a VideoWarning; so is a video with no face at all.
    """
    path = os.fspath(video_path)
    if num_steps is None:
        num_steps = num_steps_for(path, step_seconds)
    channels = 1 if cfg.color_mode == "gray" else 3
    crops = np.zeros((max(num_steps, 0), cfg.crop_size, cfg.crop_size, channels), np.uint8)
    face_present = np.zeros(max(num_steps, 0), np.float32)
    face_boxes = np.full((max(num_steps, 0), 4), np.nan, np.float32)
    for step, crop, box in iter_steps(path, num_steps, cfg, frame_times_path, step_seconds):
        if crop is not None:
            crops[step], face_present[step], face_boxes[step] = crop, 1.0, box
    return {"faces": crops, "face_present": face_present, "face_boxes": face_boxes}


def iter_steps(
    video_path: str | os.PathLike[str],
    num_steps: int,
    cfg: ml_collections.ConfigDict,
    frame_times_path: str | os.PathLike[str] | None = None,
    step_seconds: float = DEFAULT_STEP_SECONDS,
    *,
    max_missing_tail_seconds: float | None = None,
    start_step: int = 0,
    stop_step: int | None = None,
    timings: dict[str, float] | None = None,
) -> Iterator[tuple[int, np.ndarray | None, np.ndarray]]:
    """`extract` as a stream: (step, crop [S, S, C] or None where no face, box [4]) in step order.

    Memory does not grow with the video's length: one decoded frame per step of the smoother's
    look-ahead is held. Steps past the end of the video are yielded without a face.
    `max_missing_tail_seconds` overrides `cfg.max_missing_tail_seconds` (None: the config's;
    math.inf: any shortfall is padded with a warning, as prediction wants).
    `start_step`/`stop_step` give a time segment [start, stop) of the grid (parallel workers):
    decoding seeks near its start and tracking starts afresh there, so its first steps may
    differ from a run over the whole video (callers overlap segments and drop those); the end
    of the video is only checked when stop_step is num_steps. `timings`, if given, receives
    the seconds spent in face detection ("detect") and in cropping ("crop").

    Raises:
      VideoError: as `extract`.
    """
    path = os.fspath(video_path)
    _check_config(cfg)
    if num_steps < 1:
        raise VideoError(path, f"asked for {num_steps} label steps; need at least 1")
    tail_limit = cfg.max_missing_tail_seconds
    if max_missing_tail_seconds is not None:
        tail_limit = max_missing_tail_seconds
    frame_times = None if frame_times_path is None else io.read_frame_times(frame_times_path)
    if cfg.detector.num_threads > 0:
        cv2.setNumThreads(int(cfg.detector.num_threads))

    tracker = faces.FaceTracker(cfg.detector)
    smoother = faces.StreamingBoxSmoother(cfg.smoothing.max_gap_steps, cfg.smoothing.window_steps)
    waiting_frames: dict[int, np.ndarray] = {}
    any_face = False
    no_box = np.full(4, np.nan, np.float32)

    clock = {"detect": 0.0, "crop": 0.0} if timings is None else timings
    clock.setdefault("detect", 0.0)
    clock.setdefault("crop", 0.0)

    def finalise(step: int, box: np.ndarray, present: bool):
        frame = waiting_frames.pop(step)
        if present:
            started = time.perf_counter()
            crop = faces.crop_face(frame, box, cfg.crop_size, cfg.color_mode, cfg.margin)
            clock["crop"] += time.perf_counter() - started
            return step, crop, np.asarray(box, np.float32)
        return step, None, no_box

    def timed(search, *frame) -> list[np.ndarray]:
        started = time.perf_counter()
        boxes = search(*frame)
        clock["detect"] += time.perf_counter() - started
        return boxes

    def raw_boxes() -> Iterator[np.ndarray]:
        # One box per step in step order; the tracker may hand some back a few steps later
        # (and reuses a box where steps show the same frame, fps < 25).
        gray = cfg.color_mode == "gray"  # then nothing needs colour: decode the luma only
        frames = io.step_frames(path, stop, step_seconds, frame_times, start_step, gray)
        for step, _, frame in frames:
            waiting_frames[step - start_step] = frame  # the smoother counts from 0
            yield from timed(tracker.push, frame)
        yield from timed(tracker.finish)

    stop = num_steps if stop_step is None else min(stop_step, num_steps)
    for box in raw_boxes():
        for final in smoother.push(box):
            result = finalise(*final)
            any_face |= result[1] is not None
            yield (result[0] + start_step,) + result[1:]
    covered_steps = start_step + len(smoother)
    for final in smoother.finish():
        result = finalise(*final)
        any_face |= result[1] is not None
        yield (result[0] + start_step,) + result[1:]
    if stop < num_steps:
        return

    if covered_steps < num_steps:
        missing_seconds = (num_steps - covered_steps) * step_seconds
        problem = (
            f"video ends {missing_seconds:.2f} s before the last of {num_steps} label steps "
            f"(covers {covered_steps})"
        )
        if missing_seconds > tail_limit + io.TIME_TOLERANCE_SECONDS:
            raise VideoError(path, problem + "; more than max_missing_tail_seconds")
        message = f"{path}: {problem}; padded with face_present = 0"
        warnings.warn(message, VideoWarning, stacklevel=2)
        for step in range(covered_steps, num_steps):
            yield step, None, no_box
    if not any_face:
        warnings.warn(
            f"{path}: no face detected in any of {num_steps} steps; face_present is 0 throughout",
            VideoWarning,
            stacklevel=2,
        )
