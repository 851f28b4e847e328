"""The video front end (raw files → front ends → preparation cache): one face crop per 40 ms step.

`extract` decodes the video once, detects the largest face on the frame of each label step,
smooths the boxes over time and cuts the crops, returning the arrays of docs/contracts.md.
"""

from __future__ import annotations

import math
import os
import warnings

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
      video_path: mp4/avi/... readable by OpenCV's FFmpeg backend.
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
    _check_config(cfg)
    if num_steps is None:
        num_steps = num_steps_for(path, step_seconds)
    if num_steps < 1:
        raise VideoError(path, f"asked for {num_steps} label steps; need at least 1")
    frame_times = None if frame_times_path is None else io.read_frame_times(frame_times_path)
    if cfg.detector.num_threads > 0:
        cv2.setNumThreads(int(cfg.detector.num_threads))

    tracker = faces.FaceTracker(cfg.detector)
    smoother = faces.StreamingBoxSmoother(cfg.smoothing.max_gap_steps, cfg.smoothing.window_steps)
    channels = 1 if cfg.color_mode == "gray" else 3
    crops = np.zeros((num_steps, cfg.crop_size, cfg.crop_size, channels), np.uint8)
    face_present = np.zeros(num_steps, np.float32)
    face_boxes = np.full((num_steps, 4), np.nan, np.float32)
    waiting_frames: dict[int, np.ndarray] = {}

    def finalise(step: int, box: np.ndarray, present: bool) -> None:
        frame = waiting_frames.pop(step)
        if present:
            crops[step] = faces.crop_face(frame, box, cfg.crop_size, cfg.color_mode, cfg.margin)
            face_present[step] = 1.0
            face_boxes[step] = box

    detected_index, detected_box = -1, None
    for step, frame_index, frame in io.step_frames(path, num_steps, step_seconds, frame_times):
        if frame_index != detected_index:  # several steps can show the same frame (fps < 25)
            detected_index, detected_box = frame_index, tracker.next(frame)
        waiting_frames[step] = frame
        for final in smoother.push(detected_box):
            finalise(*final)
    covered_steps = len(smoother)
    for final in smoother.finish():
        finalise(*final)

    if covered_steps < num_steps:
        missing_seconds = (num_steps - covered_steps) * step_seconds
        problem = (
            f"video ends {missing_seconds:.2f} s before the last of {num_steps} label steps "
            f"(covers {covered_steps})"
        )
        if missing_seconds > cfg.max_missing_tail_seconds + io.TIME_TOLERANCE_SECONDS:
            raise VideoError(path, problem + "; more than max_missing_tail_seconds")
        message = f"{path}: {problem}; padded with face_present = 0"
        warnings.warn(message, VideoWarning, stacklevel=2)
    if not face_present.any():
        warnings.warn(
            f"{path}: no face detected in any of {num_steps} steps; face_present is 0 throughout",
            VideoWarning,
            stacklevel=2,
        )
    return {"faces": crops, "face_present": face_present, "face_boxes": face_boxes}
