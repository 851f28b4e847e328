"""Video decoding and frame timing (raw files → video front end): frames, times, the 40 ms grid.

One clock: frames are decoded with FFmpeg through PyAV and timed by their presentation timestamps
(pts) on the container's clock, origin = the container's start time (the earliest stream start),
the same origin the audio loader (`avemo.audio.io`) uses, so a flash and a sound at the same
instant land on the same step even when the streams start late or at different times (MPEG-TS,
MPEG-PS, `-itsoffset`). A display-matrix rotation (phone videos) is applied to the frames.

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
# A frame-time CSV whose first time is later than this is on an absolute clock (e.g. seconds
# since the recorder started): its first time is subtracted, with a warning.
FRAME_TIME_START_LIMIT_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video stream (frame_count and fps may be approximate).

    Times are on the container clock: `origin_seconds` is the container's start (absolute pts
    seconds), `start_seconds` and `duration_seconds` are relative to it (the video stream's first
    frame and its end). width and height are those displayed, after `rotation` (degrees
    counter-clockwise, from the display matrix).
    """

    path: str
    width: int
    height: int
    fps: float
    frame_count: int
    duration: float = 0.0
    start_seconds: float = 0.0
    origin_seconds: float = 0.0
    rotation: int = 0
    has_audio: bool = False

    @property
    def duration_seconds(self) -> float:
        return self.duration


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise VideoError(path, "file does not exist")
    if os.path.isdir(path):
        raise VideoError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "file is empty (0 bytes)")


def _open(path: str):
    """The PyAV container and its first video stream."""
    import av

    _check_file(path)
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as err:
        raise VideoError(path, f"not a readable video (FFmpeg cannot open it: {err})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(path, "not a readable video (no video stream)")
    return container, container.streams.video[0]


def container_origin(container) -> float:
    """Time 0 of the shared clock: the container's start (the earliest stream start), or 0.

    A negative start (mp4/mkv edit lists: AAC priming samples before the presentation start)
    counts as 0: presentation starts there, and the audio before it is dropped.
    """
    start = container.start_time
    if start is None:
        starts = [
            float(s.start_time * s.time_base)
            for s in container.streams
            if s.start_time is not None and s.time_base is not None
        ]
        return max(min(starts), 0.0) if starts else 0.0
    return max(float(start) / 1_000_000, 0.0)  # AV_TIME_BASE


def quarter_turns(rotation: float | None) -> int:
    """Counter-clockwise quarter turns (np.rot90's k) for a display rotation in degrees."""
    if rotation is None or not math.isfinite(rotation):
        return 0
    return int(round(float(rotation) / 90.0)) % 4


def _stream_rotation(container, stream) -> int:
    """The display rotation of the first decodable frame (FFmpeg attaches the matrix to frames)."""
    import av

    try:
        for frame in container.decode(stream):
            return quarter_turns(getattr(frame, "rotation", 0)) * 90
    except (av.error.FFmpegError, ValueError):
        return 0
    return 0


def _last_packet_end(container, stream) -> float | None:
    """End of the video stream from a demux-only pass (pts of the last packet + its duration)."""
    import av

    end = None
    try:
        for packet in container.demux(stream):
            if packet.pts is None or packet.time_base is None:
                continue
            t = float((packet.pts + (packet.duration or 0)) * packet.time_base)
            end = t if end is None else max(end, t)
    except (av.error.FFmpegError, ValueError):
        pass
    return end


def probe(video_path: str | os.PathLike[str]) -> VideoInfo:
    """Reads the container's metadata (and, where it gives no duration, its packet times).

    Raises:
      VideoError: the file is missing, empty or not a video FFmpeg can open.
    """
    path = os.fspath(video_path)
    container, stream = _open(path)
    with container:
        origin = container_origin(container)
        tb = stream.time_base
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        fps = fps if math.isfinite(fps) and fps > 0 else 0.0
        start = float(stream.start_time * tb) - origin if stream.start_time is not None else 0.0
        if stream.duration is not None and tb is not None and stream.duration > 0:
            duration = start + float(stream.duration * tb)
        else:
            end = _last_packet_end(container, stream)
            if end is not None:
                duration = end - origin
            elif stream.frames and fps:
                duration = start + stream.frames / fps
            elif container.duration:
                duration = float(container.duration) / 1_000_000
            else:
                duration = 0.0
            container.seek(0)
        frames = int(stream.frames) if stream.frames else int(round((duration - start) * fps))
        has_audio = bool(container.streams.audio)
        rotation = _stream_rotation(container, stream)
        width, height = stream.codec_context.width, stream.codec_context.height
        if rotation in (90, 270):
            width, height = height, width
    return VideoInfo(
        path=path,
        width=int(width),
        height=int(height),
        fps=fps,
        frame_count=max(frames, 0),
        duration=max(duration, 0.0),
        start_seconds=start,
        origin_seconds=origin,
        rotation=rotation,
        has_audio=has_audio,
    )


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def parse_frame_times(path: str | os.PathLike[str]) -> tuple[np.ndarray, list[str]]:
    """Per-frame times (seconds) of a RECOLA `recordings_video_frame_time/*.csv` file, and notes.

    The one parser of frame-time files: the reader (`read_frame_times`) and the corpus validator
    both use it. The AVEC2016 files are `;`-separated with one header row, a frame-index column
    and a time column in seconds. Tolerated: no header; `,`, tab or space separators; a header
    naming the columns (the one column whose name contains "time" is the time; otherwise the
    second of two or more columns, or the only column); times in milliseconds (detected when the
    median frame interval is 1 or more, i.e. below 1 frame/s in seconds, which no real video is);
    an absolute clock (first time beyond `FRAME_TIME_START_LIMIT_SECONDS`): the first time is
    subtracted, so that frame 0 sits at the start of the video, and a note says so.

    Returns:
      (float64 array [N] of frame times in seconds, row i for the i-th decoded frame;
      notes: what was adjusted, one sentence each).

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
    notes = []
    positive = steps[steps > 0]
    if positive.size and np.median(positive) >= 1.0:
        times = times / 1000.0
        notes.append("frame times read as milliseconds")
    if times[0] > FRAME_TIME_START_LIMIT_SECONDS:
        notes.append(
            f"frame times start at {times[0]:.3f} s (an absolute clock?); "
            "subtracted so that the first frame is at 0"
        )
        times = times - times[0]
    return times, notes


def read_frame_times(path: str | os.PathLike[str]) -> np.ndarray:
    """`parse_frame_times`' times; an absolute-clock start becomes a VideoWarning.

    Raises:
      VideoError: see `parse_frame_times`.
    """
    times, notes = parse_frame_times(path)
    for note in notes:
        if "absolute" in note:
            warnings.warn(f"{os.fspath(path)}: {note}", VideoWarning, stacklevel=2)
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


def _upright(frame, image: np.ndarray) -> np.ndarray:
    turns = quarter_turns(getattr(frame, "rotation", 0))
    if turns:
        image = np.ascontiguousarray(np.rot90(image, turns))
    return image


def to_bgr(frame) -> np.ndarray:
    """A decoded PyAV frame as a BGR uint8 array, turned upright by its display rotation."""
    return _upright(frame, frame.to_ndarray(format="bgr24"))


# Pixel formats whose first plane is the luma Y' (8 bit), and Y' on the limited ("MPEG", 16-235)
# range stretched to 0-255. For such frames the gray image is Y' itself: the gray of the BGR
# conversion, 0.299 R + 0.587 G + 0.114 B, equals 255/219 (Y' - 16) up to rounding, because the
# chroma terms of BT.601 cancel in that sum (measured on mp4v: at most 3 levels apart).
_LUMA_FORMATS = frozenset(
    "yuv420p yuvj420p yuv422p yuvj422p yuv444p yuvj444p yuv411p yuv410p nv12 nv21 gray".split()
)
_JPEG_RANGE = 2  # AVCOL_RANGE_JPEG: full range; unspecified and MPEG mean 16-235
_LIMITED_TO_FULL = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)


def to_gray(frame) -> np.ndarray:
    """A decoded PyAV frame as a gray uint8 array [H, W], turned upright.

    Reads the luma plane directly where the format has one (~5x cheaper than converting to
    BGR and back to gray); other formats go through BGR.
    """
    name = frame.format.name
    if name not in _LUMA_FORMATS:
        return cv2.cvtColor(to_bgr(frame), cv2.COLOR_BGR2GRAY)
    plane = frame.planes[0]
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    luma = np.ascontiguousarray(rows[:, : plane.width])
    full_range = name.startswith("yuvj") or name == "gray" or frame.color_range == _JPEG_RANGE
    if not full_range:
        luma = cv2.LUT(luma, _LIMITED_TO_FULL)
    return _upright(frame, luma)


def _decoded(
    path: str, frame_times: np.ndarray | None, seek_seconds: float = 0.0
) -> Iterator[tuple[int, float, object]]:
    """(index, time on the container clock, PyAV frame) for every decoded frame, in order.

    `seek_seconds` > 0 starts at the last keyframe at or before that time (indices then count
    from there; not with `frame_times`, which are matched to frames by index).
    """
    import av

    container, stream = _open(path)
    with container:
        stream.thread_type = "AUTO"  # FFmpeg's frame/slice threads
        origin = container_origin(container)
        if seek_seconds > 0 and frame_times is None and stream.time_base is not None:
            target = int((seek_seconds + origin) / stream.time_base)
            try:
                container.seek(target, stream=stream, backward=True, any_frame=False)
            except (av.error.FFmpegError, ValueError):
                container.seek(0)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        previous_time = -math.inf
        repaired = 0
        index = 0
        frames = container.decode(stream)
        while True:
            if frame_times is not None and index >= len(frame_times):
                break
            try:
                frame = next(frames)
            except StopIteration:
                break
            except (av.error.FFmpegError, ValueError) as err:
                if index == 0:
                    raise VideoError(path, f"FFmpeg cannot decode it: {err}") from None
                warnings.warn(
                    f"{path}: decoding stopped after frame {index - 1} ({err})",
                    VideoWarning,
                    stacklevel=3,
                )
                break
            if frame_times is not None:
                time_seconds = float(frame_times[index])
            else:
                pts_time = frame.time
                time_seconds = math.nan if pts_time is None else float(pts_time) - origin
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
                stacklevel=3,
            )
        if frame_times is not None and index < len(frame_times) - 1:
            warnings.warn(
                f"{path}: decoded {index} frames but the frame-time file lists {len(frame_times)}",
                VideoWarning,
                stacklevel=3,
            )


def decode(
    video_path: str | os.PathLike[str], frame_times: np.ndarray | None = None
) -> Iterator[tuple[int, float, np.ndarray]]:
    """Decodes every frame in order: yields (frame index, time in seconds, BGR uint8 frame).

    Times come from `frame_times` when given (decoding stops where it ends), else from the
    container (the frame's pts on the container clock, see the module docstring); timestamps
    that are missing or do not increase are replaced by previous + 1/fps with a warning.

    Raises:
      VideoError: the file is unusable, or FFmpeg fails on the first frame (a later failure
        ends decoding with a VideoWarning).
    """
    for index, time_seconds, frame in _decoded(os.fspath(video_path), frame_times):
        yield index, time_seconds, to_bgr(frame)


def step_frames(
    video_path: str | os.PathLike[str],
    num_steps: int,
    step_seconds: float,
    frame_times: np.ndarray | None = None,
    start_step: int = 0,
    gray: bool = False,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Streams the label grid: yields (step, frame index, BGR frame) for steps 0, 1, 2, ...

    `gray`: yield gray frames [H, W] instead (`to_gray`), for the gray face crops.

    `start_step` > 0 seeks to a keyframe at least a second before that step and yields from
    it on (a time segment, for parallel workers; frame indices then count from the keyframe).

    Follows the timing rule of this module (same result as `step_frame_indices` on the frame
    times). Holds one frame of look-ahead, decodes every frame up to the last one needed but
    converts (colour, rotation) only the frames that some step shows, and stops yielding at the
    end of the video: steps past it are not yielded (the caller pads).

    Raises:
      VideoError: the file is unusable or has no decodable frame.
    """
    path = os.fspath(video_path)
    step = start_step
    held: list = []  # [index, time, PyAV frame, converted image or None]
    times: list[float] = []

    def image() -> np.ndarray:
        if held[3] is None:
            held[3] = (to_gray if gray else to_bgr)(held[2])
        return held[3]

    seek = max(start_step * step_seconds - 1.0, 0.0) if frame_times is None else 0.0
    for index, time_seconds, frame in _decoded(path, frame_times, seek):
        if held:
            while step < num_steps and step * step_seconds < time_seconds - TIME_TOLERANCE_SECONDS:
                yield step, held[0], image()
                step += 1
        if step >= num_steps:
            break
        held = [index, time_seconds, frame, None]
        times.append(time_seconds)
        if len(times) > 64:
            del times[:-64]  # the end rule needs only a typical interval
    if not held:
        raise VideoError(path, "contains no decodable frames")
    fps = 0.0
    if len(times) < 2:
        fps = probe(path).fps or 1.0 / step_seconds
    end = held[1] + frame_interval(np.asarray(times), fps) + TIME_TOLERANCE_SECONDS
    while step < num_steps and step * step_seconds <= end:
        yield step, held[0], image()
        step += 1
