"""Faces in frames (video front end, after decoding): Haar detection, box smoothing, crops.

The face-present flag n of Eq. (31) is 1 where a (possibly bridged) box exists, 0 elsewhere.
Boxes are (x, y, w, h) in source pixels, float, NaN rows where there is no face.
"""

from __future__ import annotations

import os

import cv2
import ml_collections
import numpy as np


class FaceDetector:
    """OpenCV's Haar frontal-face cascade, run on a downscaled gray copy of each frame."""

    def __init__(self, detector_cfg: ml_collections.ConfigDict):
        path = os.path.join(cv2.data.haarcascades, detector_cfg.cascade)
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(
                f"Haar cascade {path!r} could not be loaded; OpenCV 5 ships none, "
                "install opencv-python-headless<5"
            )
        self._detect_width = int(detector_cfg.detect_width)
        self._scale_factor = float(detector_cfg.scale_factor)
        self._min_neighbors = int(detector_cfg.min_neighbors)
        self._min_size = int(detector_cfg.min_size)
        self._equalize = bool(detector_cfg.equalize_histogram)

    def detection_image(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        """The gray image the cascade sees (downscaled, never up); source px per its px."""
        height, width = frame.shape[:2]
        scale = max(1.0, width / self._detect_width)
        small = _gray(frame)  # before resizing: a third of the pixels to resample
        if scale > 1.0:
            size = (self._detect_width, max(1, round(height / scale)))
            small = cv2.resize(small, size, interpolation=cv2.INTER_AREA)
        if self._equalize:
            small = cv2.equalizeHist(small)
        return small, width / small.shape[1]

    def detect(self, frame: np.ndarray, min_face: float | None = None) -> np.ndarray:
        """All faces in a BGR or gray uint8 frame: float32 [N, 4] (x, y, w, h) in source pixels.

        `min_face` (source px): look only for faces of at least that size, i.e. skip the
        cascade's smaller (and most costly) scales. The image is not shrunk for it: on a
        smaller image the cascade finds too few neighbours (measured).
        """
        small, scale = self.detection_image(frame)
        smallest = max(self._min_size, int((min_face or 0.0) / scale))
        found = self._cascade.detectMultiScale(
            small,
            scaleFactor=self._scale_factor,
            minNeighbors=self._min_neighbors,
            minSize=(smallest, smallest),
        )
        if len(found) == 0:
            return np.zeros((0, 4), np.float32)
        return np.asarray(found, np.float32).reshape(-1, 4) * np.float32(scale)

    def largest(self, frame: np.ndarray, min_face: float | None = None) -> np.ndarray:
        """The largest face (by area) as float32 [4], or a row of NaN when there is none."""
        return _largest(self.detect(frame, min_face))

    def largest_near(
        self, frame: np.ndarray, box: np.ndarray, margin: float, face_size: int, min_neighbors: int
    ) -> np.ndarray:
        """The largest face within `box` widened by `margin` per side (tracking search).

        The region is scaled so that a face of `box`'s size is `face_size` pixels (never
        upscaled) and searched without histogram equalisation; float32 [4] in source pixels,
        NaN when there is none.
        """
        x0, y0, x1, y1 = crop_region(box, margin)
        height, width = frame.shape[:2]
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        scale = max(1.0, float(box[2]) / face_size)
        if min(x1 - x0, y1 - y0) < self._min_size * scale:
            return np.full(4, np.nan, np.float32)
        region = _gray(frame[y0:y1, x0:x1])
        if scale > 1.0:
            size = (round((x1 - x0) / scale), round((y1 - y0) / scale))
            region = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
        found = self._cascade.detectMultiScale(
            region,
            scaleFactor=self._scale_factor,
            minNeighbors=min_neighbors,
            minSize=(self._min_size, self._min_size),
        )
        if len(found) == 0:
            return np.full(4, np.nan, np.float32)
        boxes = np.asarray(found, np.float32).reshape(-1, 4) * np.float32(scale)
        boxes[:, :2] += np.array([x0, y0], np.float32)
        return _largest(boxes)


def _gray(image: np.ndarray) -> np.ndarray:
    """A BGR image in gray (a gray one as it is)."""
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image


_NO_BOX = np.full(4, np.nan, np.float32)
_NO_BOX.setflags(write=False)


def _largest(boxes: np.ndarray) -> np.ndarray:
    if boxes.shape[0] == 0:
        return np.full(4, np.nan, np.float32)
    return boxes[int(np.argmax(boxes[:, 2] * boxes[:, 3]))]


class FaceTracker:
    """The largest face per step, searched near the previous step's face when there was one.

    Steps are pushed in order (`push`, then `finish`) and come back resolved in order, some
    later than pushed: the first step is searched in full, but after a full search that found
    no face only every `absent_detect_every_steps`-th step is; when that search finds a face
    the steps in between are searched backwards near it, so a face that appears is found on
    its own step (those frames are held meanwhile, at most absent_detect_every_steps - 1). A
    face seen for fewer steps than that between two such searches can be missed.

    With a tracked face (`track`): the next step searches only near it
    (`FaceDetector.largest_near`); a miss there gives no face for that step and is retried
    near the same box on the next steps. After `track_miss_steps` misses in a row, and every
    `full_detect_every_steps` steps, the full frame is searched for faces of at least
    `full_detect_min_ratio` x the tracked face's size (skipping the cascade's small, costly
    scales); only if it finds none is every size searched. The largest-face rule is kept:
    a larger face elsewhere is taken within full_detect_every_steps steps, and a face that
    ends is dropped within track_miss_steps + 1. With `track_every_steps` = k > 1, after a
    step whose face was found near the last one the next k - 1 steps are held unsearched and
    get boxes interpolated between the two searched steps', or, when the later search finds
    no face, are each searched near the earlier face.

    A step that shows the same decoded frame as the step before (fps below 25; the same array
    object) gets that step's box without a search.
    """

    def __init__(self, detector_cfg: ml_collections.ConfigDict):
        self.detector = FaceDetector(detector_cfg)
        self._track = bool(detector_cfg.track)
        self._margin = float(detector_cfg.track_margin)
        self._face_size = int(detector_cfg.track_face_size)
        self._min_neighbors = int(detector_cfg.track_min_neighbors)
        self._every = max(1, int(detector_cfg.full_detect_every_steps))
        self._min_ratio = float(detector_cfg.full_detect_min_ratio)
        self._miss_steps = max(0, int(detector_cfg.track_miss_steps))
        # Without tracking every step gets a full search of its own.
        self._absent_every = max(1, int(detector_cfg.absent_detect_every_steps))
        if not self._track:
            self._absent_every = 1
        self._previous = _NO_BOX  # the last box found (kept through a few near misses)
        self._misses = 0  # near-search misses in a row
        self._since_full = 0
        self._last_frame: np.ndarray | None = None
        self._last_box = _NO_BOX
        self._track_every = max(1, int(detector_cfg.track_every_steps))
        self._to_skip = 0  # tracked steps to hold before the next search
        self._between: list[np.ndarray] = []  # frames of tracked steps awaiting the next
        self._pending: list[np.ndarray] = []  # frames of absent steps awaiting a search
        self._wait = 1  # pending steps that make a search due (the first step is searched)
        self.full_searches = 0
        self.sized_searches = 0
        self.near_searches = 0

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        """Takes the next step's frame; returns the boxes (float32 [4], NaN where none) of the
        steps that became resolved, oldest first."""
        if frame is self._last_frame:
            if self._pending:
                self._pending.append(frame)
            elif self._between:
                self._between.append(frame)
            else:
                return [self._last_box.copy()]
            return []
        self._last_frame = frame
        if not self._pending and self._tracking():
            if self._to_skip > 0:  # searched with a later step, its box interpolated
                self._to_skip -= 1
                self._between.append(frame)
                self._since_full += 1
                return []
            return self._follow_step(frame)
        self._pending.append(frame)
        if len(self._pending) < self._wait:
            return []
        return self._resolve_pending()

    def finish(self) -> list[np.ndarray]:
        """The boxes of the steps still held (a full search on the last of them)."""
        if self._between:
            return self._follow_step(None)
        return self._resolve_pending() if self._pending else []

    def _follow_step(self, frame: np.ndarray | None) -> list[np.ndarray]:
        """The box of a tracked step (None: there is none, the end), and before it those of the
        steps held since the last one: interpolated when both ends have a face, else each frame
        searched near the earlier face."""
        held, self._between = self._between, []
        before = self._previous
        boxes: list[np.ndarray] = []
        box = None if frame is None else self._follow(frame)
        if held and box is not None and np.isfinite(box).all():
            weights = np.arange(1, len(held) + 1) / (len(held) + 1)
            boxes = [before + w * (box - before) for w in weights]
        elif held:
            searched: dict[int, np.ndarray] = {}
            for frame_held in held:
                if id(frame_held) not in searched:
                    self.near_searches += 1
                    searched[id(frame_held)] = self._near(frame_held, before)
                boxes.append(searched[id(frame_held)])
        if box is not None:
            boxes.append(box)
            self._last_box = box
        found = box is not None and bool(np.isfinite(box).all())
        self._to_skip = self._track_every - 1 if found else 0
        return [np.asarray(b, np.float32).copy() for b in boxes]

    def _tracking(self) -> bool:
        return self._track and bool(np.isfinite(self._previous).all())

    def _follow(self, frame: np.ndarray) -> np.ndarray:
        box = _NO_BOX
        if self._since_full < self._every:
            self.near_searches += 1
            self._since_full += 1
            box = self._near(frame, self._previous)
            if np.isfinite(box).all():
                self._misses = 0
                self._previous = box
                return box
            self._misses += 1
            if self._misses <= self._miss_steps:
                return box  # retried near the same box on the next step
        # The periodic search, or the face was lost: first (cheaply) for faces of about the
        # tracked size or larger anywhere, then for all sizes.
        self.sized_searches += 1
        box = self.detector.largest(frame, min_face=self._min_ratio * float(self._previous[2]))
        if not np.isfinite(box).all():
            box = self._full(frame)
        self._previous, self._misses, self._since_full = box, 0, 1
        self._wait = self._absent_every
        return box

    def _near(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        return self.detector.largest_near(
            frame, box, self._margin, self._face_size, self._min_neighbors
        )

    def _full(self, frame: np.ndarray) -> np.ndarray:
        self.full_searches += 1
        return self.detector.largest(frame)

    def _resolve_pending(self) -> list[np.ndarray]:
        frames, self._pending = self._pending, []
        box = self._full(frames[-1])
        boxes = [box]
        # Backwards from the found face: each earlier held frame is searched near the box of
        # the step after it, until one has no face there (those before it have none either).
        later, later_frame = box, frames[-1]
        for frame in reversed(frames[:-1]):
            if frame is not later_frame and np.isfinite(later).all() and self._track:
                self.near_searches += 1
                found = self._near(frame, later)
                if not np.isfinite(found).all():  # a near miss at the onset: look once more
                    found = self._full(frame)
                later, later_frame = found, frame
            elif frame is not later_frame:
                later, later_frame = _NO_BOX, frame
            boxes.append(later)
        self._last_box = box
        self._previous, self._misses, self._since_full = box, 0, 1
        self._wait = self._absent_every
        return [b.copy() for b in reversed(boxes)]


def crop_region(box: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """The pixel rectangle (x0, y0, x1, y1), end exclusive, of `box` widened by `margin` per side.

    It may extend beyond the frame; `crop_face` fills that part with black.
    """
    x, y, w, h = (float(v) for v in box)
    x0 = int(np.floor(x - margin * w))
    y0 = int(np.floor(y - margin * h))
    x1 = int(np.ceil(x + w + margin * w))
    y1 = int(np.ceil(y + h + margin * h))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def crop_face(
    frame: np.ndarray, box: np.ndarray, crop_size: int, color_mode: str, margin: float
) -> np.ndarray:
    """Cuts the widened box out of a BGR frame, resized to [crop_size, crop_size, C] uint8.

    C is 1 for color_mode "gray", 3 (RGB order) for "rgb".
    """
    if color_mode == "gray":
        frame = _gray(frame)  # before resizing: a third of the pixels to resample
    x0, y0, x1, y1 = crop_region(box, margin)
    height, width = frame.shape[:2]
    region = np.zeros((y1 - y0, x1 - x0) + frame.shape[2:], np.uint8)
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if fx1 > fx0 and fy1 > fy0:
        region[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0] = frame[fy0:fy1, fx0:fx1]
    shrinking = region.shape[0] > crop_size and region.shape[1] > crop_size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(region, (crop_size, crop_size), interpolation=interpolation)
    if color_mode == "gray":
        if resized.ndim == 3:
            resized = cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)
        return resized[:, :, None]
    if color_mode == "rgb":
        if resized.ndim == 2:
            return np.repeat(resized[:, :, None], 3, axis=2)
        return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    raise ValueError(f"color_mode must be 'gray' or 'rgb', got {color_mode!r}")


def _miss_runs(detected: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of False in a boolean vector."""
    padded = np.concatenate([[True], detected, [True]]).astype(np.int8)
    edges = np.diff(padded)
    return list(zip(np.flatnonzero(edges == -1), np.flatnonzero(edges == 1)))


def smooth_boxes(
    raw_boxes: np.ndarray, max_gap_steps: int, window_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bridges short detection gaps and averages box jitter over time.

    1. A run of at most `max_gap_steps` steps without a box, with a box on both sides, gets
       boxes interpolated linearly between them; such a run at the start or end of the
       sequence, next to a box, holds that box. Longer runs stay empty (a real absence).
    2. Each present step's box becomes the mean of the present boxes within the centred
       window of `window_steps` steps.

    Args:
      raw_boxes: [T, 4] largest face per step, NaN rows where none was detected.

    Returns:
      boxes [T, 4] float32 (NaN where absent) and present [T] bool.
    """
    raw = np.asarray(raw_boxes, np.float64).reshape(-1, 4)
    num_steps = raw.shape[0]
    detected = np.isfinite(raw).all(axis=1)
    boxes = np.where(detected[:, None], raw, 0.0)
    present = detected.copy()
    if detected.any():
        for start, end in _miss_runs(detected):
            if end - start > max_gap_steps:
                continue
            before, after = start - 1, end
            if before >= 0 and after < num_steps:
                weights = (np.arange(start, end) - before) / (after - before)
                boxes[start:end] = raw[before] + weights[:, None] * (raw[after] - raw[before])
            else:
                boxes[start:end] = raw[before if before >= 0 else after]
            present[start:end] = True
    half = max(int(window_steps), 1) // 2
    if half > 0:
        weights = present.astype(np.float64)
        values = boxes * weights[:, None]
        total = np.zeros_like(values)
        count = np.zeros_like(weights)
        # Shifted sums (not cumsum) so that a window's result does not depend on what lies
        # outside it: the streaming smoother below relies on that.
        for offset in range(-half, half + 1):
            lo, hi = max(0, -offset), min(num_steps, num_steps - offset)
            total[lo:hi] += values[lo + offset : hi + offset]
            count[lo:hi] += weights[lo + offset : hi + offset]
        boxes = np.where(present[:, None], total / np.maximum(count, 1.0)[:, None], 0.0)
    boxes[~present] = np.nan
    return boxes.astype(np.float32), present


class StreamingBoxSmoother:
    """`smooth_boxes` one step at a time, with a fixed look-ahead, for single-pass extraction.

    A smoothed box at step k depends only on raw boxes within k ± radius, radius =
    max_gap_steps + 1 + window_steps // 2, so step k is final once step k + radius is known;
    results equal `smooth_boxes` on the whole sequence.
    """

    def __init__(self, max_gap_steps: int, window_steps: int):
        self._max_gap = int(max_gap_steps)
        self._window = int(window_steps)
        self.radius = self._max_gap + 1 + max(self._window, 1) // 2
        self._raw: list[np.ndarray] = []
        self._next_final = 0

    def __len__(self) -> int:
        return len(self._raw)

    def _final(self, step: int) -> tuple[int, np.ndarray, bool]:
        lo = max(0, step - self.radius)
        hi = min(len(self._raw), step + self.radius + 1)
        boxes, present = smooth_boxes(np.stack(self._raw[lo:hi]), self._max_gap, self._window)
        return step, boxes[step - lo], bool(present[step - lo])

    def push(self, raw_box: np.ndarray) -> list[tuple[int, np.ndarray, bool]]:
        """Adds the next step's raw box; returns the (step, box, present) that became final."""
        self._raw.append(np.asarray(raw_box, np.float64).reshape(4))
        out = []
        while self._next_final + self.radius < len(self._raw):
            out.append(self._final(self._next_final))
            self._next_final += 1
        return out

    def finish(self) -> list[tuple[int, np.ndarray, bool]]:
        """The remaining steps, treating the last pushed step as the end of the sequence."""
        out = [self._final(step) for step in range(self._next_final, len(self._raw))]
        self._next_final = len(self._raw)
        return out
