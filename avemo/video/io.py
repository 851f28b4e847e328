"""Video decoding and frame timing (raw files → video front end): frames, times, the 40 ms grid.

Timing rule: label step k (time t_k = k · step) shows the latest frame whose time is at or before
t_k (what a viewer sees at t_k); steps before the first frame take the first frame; a frame
covers one frame interval after its time, and steps after that are past the end of the video.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings
from collections.abc import Iterator

import cv2
import numpy as np

from avemo.video.errors import VideoError, VideoWarning

# Frame and step times are compared with this slack, so that 40.0 ms container times and
# k * 0.04 s in floating point (or 33.3667 ms NTSC times rounded in a CSV) agree.
TIME_TOLERANCE_SECONDS = 1e-3


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video (frame_count and fps may be approximate)."""

    path: str
    width: int
    height: int
    fps: float
    frame_count: int

    @property
    def duration_seconds(self) -> float:
        return self.frame_count / self.fps if self.fps > 0 else 0.0


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise VideoError(path, "file does not exist")
    if os.path.isdir(path):
        raise VideoError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "file is empty (0 bytes)")


def _open(path: str) -> cv2.VideoCapture:
    _check_file(path)
    try:
        # FFmpeg explicitly: CAP_ANY would fall back to e.g. the image-sequence reader.
        capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    except cv2.error as err:
        raise VideoError(path, f"OpenCV cannot open it: {err}") from err
    if not capture.isOpened():
        capture.release()
        raise VideoError(path, "not a readable video (OpenCV/FFmpeg cannot open it)")
    return capture


def probe(video_path: str | os.PathLike[str]) -> VideoInfo:
    """Reads the container's metadata without decoding frames.

    Raises:
      VideoError: the file is missing, empty or not a video OpenCV can open.
    """
    path = os.fspath(video_path)
    capture = _open(path)
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        return VideoInfo(
            path=path,
            width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            fps=float(fps) if math.isfinite(fps) and fps > 0 else 0.0,
            frame_count=int(count) if math.isfinite(count) and count > 0 else 0,
        )
    finally:
        capture.release()


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def read_frame_times(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads per-frame times (seconds) from a RECOLA `recordings_video_frame_time/*.csv` file.

    The AVEC2016 files are `;`-separated with one header row, a frame-index column and a time
    column in seconds. Tolerated: no header; `,`, tab or space separators; a header naming the
    columns (the one column whose name contains "time" is the time; otherwise the second of
    two or more columns, or the only column); times in milliseconds (detected when the median frame
    interval is 1 or more, i.e. below 1 frame/s in seconds, which no real video is).

    Returns:
      float64 array [N] of frame times in seconds, row i for the i-th decoded frame.

    Raises:
      VideoError: missing/empty file, non-numeric rows, or times that go backwards.
    """
    path = os.fspath(path)
    _check_file(path)
    with open(path, encoding="utf-8-sig") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    rows = [[field for field in re.split(r"[;,\t ]+", line) if field] for line in lines]
    if not rows:
        raise VideoError(path, "frame-time file has no rows")
    header = None if all(_is_number(field) for field in rows[0]) else rows[0]
    data = rows[1:] if header is not None else rows
    if not data:
        raise VideoError(path, "frame-time file has a header but no rows")
    width = len(data[0])
    column = 0 if width == 1 else 1
    if header is not None:
        named = [i for i, name in enumerate(header) if "time" in name.lower()]
        if len(named) == 1:
            column = named[0]
    times = np.empty(len(data), np.float64)
    for row_number, row in enumerate(data):
        try:
            times[row_number] = float(row[column])
        except (IndexError, ValueError) as err:
            line_number = row_number + (2 if header is not None else 1)
            problem = f"line {line_number}: no numeric time in column {column}"
            raise VideoError(path, problem) from err
    if not np.all(np.isfinite(times)):
        raise VideoError(path, "frame times contain NaN or infinity")
    steps = np.diff(times)
    if np.any(steps < 0):
        bad = int(np.argmax(steps < 0)) + 1
        raise VideoError(path, f"frame times go backwards at frame {bad}")
    positive = steps[steps > 0]
    if positive.size and np.median(positive) >= 1.0:
        times = times / 1000.0
    return times


def frame_interval(frame_times: np.ndarray, fps: float = 0.0) -> float:
    """The typical time between frames: the median positive difference, else 1/fps, else 0."""
    steps = np.diff(np.asarray(frame_times, np.float64))
    positive = steps[steps > 0]
    if positive.size:
        return float(np.median(positive))
    return 1.0 / fps if fps > 0 else 0.0


def step_frame_indices(
    frame_times: np.ndarray, num_steps: int, step_seconds: float, fps: float = 0.0
) -> np.ndarray:
    """The timing rule on known frame times: frame index per step, -1 past the end of the video.

    This is the reference the streaming `step_frames` follows (used in tests and for planning).
    """
    times = np.asarray(frame_times, np.float64)
    step_times = np.arange(num_steps) * step_seconds
    if times.size == 0:
        return np.full(num_steps, -1, np.int64)
    indices = np.searchsorted(times, step_times + TIME_TOLERANCE_SECONDS, side="right") - 1
    indices = np.maximum(indices, 0)
    end = times[-1] + frame_interval(times, fps) + TIME_TOLERANCE_SECONDS
    indices[step_times > end] = -1
    return indices.astype(np.int64)


def decode(
    video_path: str | os.PathLike[str], frame_times: np.ndarray | None = None
) -> Iterator[tuple[int, float, np.ndarray]]:
    """Decodes every frame in order: yields (frame index, time in seconds, BGR uint8 frame).

    Times come from `frame_times` when given (decoding stops where it ends), else from the
    container (CAP_PROP_POS_MSEC, the frame's presentation time); container times that do not
    increase are replaced by previous + 1/fps with a warning.

    Raises:
      VideoError: the file is unusable, or OpenCV fails while decoding.
    """
    path = os.fspath(video_path)
    capture = _open(path)
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = float(fps) if math.isfinite(fps) and fps > 0 else 0.0
        previous_time = -math.inf
        repaired = 0
        index = 0
        while True:
            if frame_times is not None and index >= len(frame_times):
                break
            try:
                ok, frame = capture.read()
                container_ms = capture.get(cv2.CAP_PROP_POS_MSEC)
            except cv2.error as err:
                raise VideoError(path, f"OpenCV failed decoding frame {index}: {err}") from err
            if not ok or frame is None or frame.size == 0:
                break
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            if frame_times is not None:
                time_seconds = float(frame_times[index])
            else:
                time_seconds = container_ms / 1000.0
                if not math.isfinite(time_seconds) or time_seconds <= previous_time:
                    if fps <= 0:
                        raise VideoError(
                            path, "has neither increasing frame timestamps nor a frame rate"
                        )
                    time_seconds = 0.0 if index == 0 else previous_time + 1.0 / fps
                    repaired += index > 0
            previous_time = time_seconds
            yield index, time_seconds, frame
            index += 1
        if repaired:
            warnings.warn(
                f"{path}: {repaired} frame timestamps did not increase; used 1/fps spacing there",
                VideoWarning,
                stacklevel=2,
            )
        if frame_times is not None and index < len(frame_times) - 1:
            warnings.warn(
                f"{path}: decoded {index} frames but the frame-time file lists {len(frame_times)}",
                VideoWarning,
                stacklevel=2,
            )
    finally:
        capture.release()


def step_frames(
    video_path: str | os.PathLike[str],
    num_steps: int,
    step_seconds: float,
    frame_times: np.ndarray | None = None,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Streams the label grid: yields (step, frame index, BGR frame) for steps 0, 1, 2, ...

    Follows the timing rule of this module (same result as `step_frame_indices` on the frame
    times). Holds one frame of look-ahead, decodes every frame up to the last one needed, and
    stops yielding at the end of the video: steps past it are not yielded (the caller pads).

    Raises:
      VideoError: the file is unusable or has no decodable frame.
    """
    path = os.fspath(video_path)
    step = 0
    held: tuple[int, float, np.ndarray] | None = None
    times: list[float] = []
    for index, time_seconds, frame in decode(path, frame_times):
        if held is not None:
            while step < num_steps and step * step_seconds < time_seconds - TIME_TOLERANCE_SECONDS:
                yield step, held[0], held[2]
                step += 1
        if step >= num_steps:
            break
        held = (index, time_seconds, frame)
        times.append(time_seconds)
    if held is None:
        raise VideoError(path, "contains no decodable frames")
    fps = 0.0
    if len(times) < 2:
        fps = probe(path).fps or 1.0 / step_seconds
    end = held[1] + frame_interval(np.asarray(times), fps) + TIME_TOLERANCE_SECONDS
    while step < num_steps and step * step_seconds <= end:
        yield step, held[0], held[2]
        step += 1
