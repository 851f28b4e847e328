"""Haar detection on real photographs, crops with margin, and temporal box smoothing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from avemo.video import faces
from tests.video.generated_videos import astronaut_bgr, face_patch

# Where the astronaut's face is in the 512 x 512 photo (x0, y0, x1, y1), generously: the
# detector must put its box centre inside and cover most of it.
ASTRONAUT_FACE = (170, 55, 280, 170)


def test_detector_finds_the_astronaut_face(video_cfg):
    detector = faces.FaceDetector(video_cfg.detector)
    boxes = detector.detect(astronaut_bgr())
    assert boxes.shape == (1, 4)
    x, y, w, h = detector.largest(astronaut_bgr())
    x0, y0, x1, y1 = ASTRONAUT_FACE
    assert x0 <= x + w / 2 <= x1 and y0 <= y + h / 2 <= y1
    assert 0.6 * (x1 - x0) <= w <= 1.3 * (x1 - x0)


@pytest.mark.parametrize("name", ["coffee", "chelsea", "brick", "gradient"])
def test_detector_finds_no_face_where_there_is_none(video_cfg, name):
    if name == "gradient":
        image = np.tile(np.linspace(0, 255, 640, dtype=np.uint8), (480, 1))
    else:
        image = getattr(skimage.data, name)()
    detector = faces.FaceDetector(video_cfg.detector)
    assert detector.detect(image).shape == (0, 4)
    assert np.isnan(detector.largest(image)).all()


def test_detector_works_on_gray_and_large_frames(video_cfg):
    detector = faces.FaceDetector(video_cfg.detector)
    big = cv2.resize(astronaut_bgr(), (1024, 1024))  # detection downscales 6.4x
    (x, y, w, h), (gx, gy, gw, gh) = detector.largest(big), detector.largest(astronaut_bgr())
    np.testing.assert_allclose([x, y, w, h], np.array([gx, gy, gw, gh]) * 2, rtol=0.15, atol=8)
    gray = cv2.cvtColor(astronaut_bgr(), cv2.COLOR_BGR2GRAY)
    assert detector.detect(gray).shape == (1, 4)


@pytest.mark.parametrize("margin", [0.0, 0.25])
def test_crop_contains_the_detected_box_with_margin(video_cfg, margin):
    image = astronaut_bgr()
    box = faces.FaceDetector(video_cfg.detector).largest(image)
    x, y, w, h = (float(v) for v in box)
    x0, y0, x1, y1 = faces.crop_region(box, margin)
    # The region holds the box plus margin * size on every side, to the pixel.
    assert x0 <= x - margin * w < x0 + 1 and x1 - 1 < x + w + margin * w <= x1
    assert y0 <= y - margin * h < y0 + 1 and y1 - 1 < y + h + margin * h <= y1
    crop = faces.crop_face(image, box, 48, "rgb", margin)
    assert crop.shape == (48, 48, 3) and crop.dtype == np.uint8
    expected = cv2.resize(image[y0:y1, x0:x1], (48, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(crop, expected[:, :, ::-1])  # RGB order
    gray = faces.crop_face(image, box, 48, "gray", margin)
    assert gray.shape == (48, 48, 1)
    # Gray is taken before resizing (a third of the pixels to resample): the same image up
    # to rounding.
    region_gray = cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY)
    expected_gray = cv2.resize(region_gray, (48, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(gray[:, :, 0], expected_gray)
    np.testing.assert_allclose(gray[:, :, 0], cv2.cvtColor(expected, cv2.COLOR_BGR2GRAY), atol=1)


def test_crop_beyond_the_frame_is_black_not_shifted():
    image = np.full((100, 100, 3), 200, np.uint8)
    crop = faces.crop_face(image, np.array([-20.0, 0.0, 40.0, 40.0]), 40, "gray", 0.0)
    assert (crop[:, :18] == 0).all()  # the 20 px left of the frame (resize blurs one column)
    assert (crop[:, 22:] == 200).all()


def _boxes(present, base=(10.0, 20.0, 30.0, 30.0)):
    rows = [base if p else (np.nan,) * 4 for p in present]
    return np.array(rows, np.float64)


def test_smoothing_bridges_short_gaps_only():
    present = [1] * 5 + [0] * 3 + [1] * 5 + [0] * 4 + [1] * 5
    boxes, flags = faces.smooth_boxes(_boxes(present), max_gap_steps=3, window_steps=1)
    assert flags.tolist() == [True] * 13 + [False] * 4 + [True] * 5
    assert np.isnan(boxes[13:17]).all() and np.isfinite(boxes[:13]).all()


def test_smoothing_interpolates_across_a_gap_and_holds_at_the_ends():
    raw = np.array([[np.nan] * 4, [0, 0, 10, 10], [np.nan] * 4, [4, 8, 10, 10], [np.nan] * 4])
    boxes, flags = faces.smooth_boxes(raw, max_gap_steps=1, window_steps=1)
    assert flags.all()
    np.testing.assert_allclose(boxes[:, :2], [[0, 0], [0, 0], [2, 4], [4, 8], [4, 8]])


def test_smoothing_averages_jitter_within_the_window():
    raw = np.array([[10.0, 0, 20, 20], [14.0, 0, 20, 20], [12.0, 0, 20, 20], [np.nan] * 4])
    boxes, flags = faces.smooth_boxes(raw, max_gap_steps=0, window_steps=3)
    np.testing.assert_allclose(boxes[:3, 0], [12.0, 12.0, 13.0])
    assert flags.tolist() == [True, True, True, False]


def test_no_detection_at_all_stays_absent():
    boxes, flags = faces.smooth_boxes(_boxes([0] * 3), max_gap_steps=5, window_steps=5)
    assert not flags.any() and np.isnan(boxes).all()


@pytest.mark.parametrize(("max_gap", "window"), [(3, 5), (0, 1), (2, 3), (6, 7)])
def test_streaming_smoother_equals_whole_sequence(max_gap, window):
    rng = np.random.default_rng(max_gap * 10 + window)
    # Random presence with gaps of all lengths, and jittered boxes.
    present = np.repeat(rng.random(40) < 0.6, rng.integers(1, 8, 40))[:150]
    raw = rng.normal(100, 5, (present.size, 4))
    raw[~present] = np.nan
    expected_boxes, expected_present = faces.smooth_boxes(raw, max_gap, window)
    smoother = faces.StreamingBoxSmoother(max_gap, window)
    results = [final for box in raw for final in smoother.push(box)] + smoother.finish()
    assert [step for step, _, _ in results] == list(range(present.size))
    assert [flag for _, _, flag in results] == expected_present.tolist()
    np.testing.assert_allclose(np.stack([box for _, box, _ in results]), expected_boxes, rtol=1e-6)


def _two_face_frames(with_big_face: bool) -> np.ndarray:
    frame = np.full((480, 640, 3), 110, np.uint8)
    frame[20:220, 20:220] = face_patch(200)  # face ~86 px
    if with_big_face:
        frame[150:450, 300:600] = face_patch(300)  # face ~130 px
    return frame


def _track(tracker: faces.FaceTracker, frames) -> list[np.ndarray]:
    """One box per frame, in order (the tracker hands some back later)."""
    boxes = [box for frame in frames for box in tracker.push(frame)] + tracker.finish()
    assert len(boxes) == len(frames)
    return boxes


@pytest.mark.parametrize("track", [True, False])
def test_tracker_takes_a_larger_face_within_the_full_search_interval(video_cfg, track):
    video_cfg.detector.detect_width = 640  # no downscaling: the small face is found too
    video_cfg.detector.track = track
    tracker = faces.FaceTracker(video_cfg.detector)
    boxes = _track(tracker, [_two_face_frames(step >= 5) for step in range(25)])
    small = [box for box in boxes[:5]]
    assert all(20 <= box[0] <= 150 and box[2] < 110 for box in small)
    switch = video_cfg.detector.full_detect_every_steps if track else 5
    assert all(box[0] > 300 and box[2] > 110 for box in boxes[switch:])
    if track:  # between the full searches it stays on the face it had
        assert all(box[0] < 150 for box in boxes[5:switch])
        assert tracker.near_searches > tracker.full_searches + tracker.sized_searches


def _scenes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scene = np.full((240, 320, 3), 110, np.uint8)
    left, right = scene.copy(), scene.copy()
    left[20:220, 0:200] = face_patch(200)
    right[40:240, 120:320] = face_patch(200)
    return scene, left, right


def test_tracker_searches_anew_when_the_face_moves_or_leaves(video_cfg):
    misses = video_cfg.detector.track_miss_steps
    scene, left, right = _scenes()
    frames = [left.copy()] + [right.copy() for _ in range(misses + 2)]
    frames += [scene.copy() for _ in range(misses + 2)]
    boxes = _track(faces.FaceTracker(video_cfg.detector), frames)
    assert boxes[0][0] < 100
    # A jump out of the searched region: no face for at most track_miss_steps steps (the
    # smoother bridges them), then the full search finds it where it went.
    jumped = boxes[1 : misses + 3]
    assert all(np.isnan(box).all() for box in jumped[:misses])
    assert jumped[misses][0] > 140 and jumped[misses + 1][0] > 140
    assert all(np.isnan(box).all() for box in boxes[misses + 3 :])


@pytest.mark.parametrize("absent_every", [1, 3, 4, 7])
def test_a_face_that_appears_is_found_on_its_own_step(video_cfg, absent_every):
    """While no face is tracked only every absent_every-th step is searched in full; the steps
    between are searched backwards from a found face, so the onset lands where it is."""
    video_cfg.detector.absent_detect_every_steps = absent_every
    scene, left, _ = _scenes()
    for onset in range(1, 9):
        frames = [scene.copy() for _ in range(onset)] + [left.copy() for _ in range(6)]
        tracker = faces.FaceTracker(video_cfg.detector)
        present = [bool(np.isfinite(box).all()) for box in _track(tracker, frames)]
        assert present == [False] * onset + [True] * 6, onset
        full_searches_without_skipping = onset + 1
        assert tracker.full_searches <= full_searches_without_skipping
        if absent_every > 1 and onset >= 2 * absent_every:
            assert tracker.full_searches < full_searches_without_skipping


def test_a_step_showing_the_same_frame_reuses_its_box(video_cfg):
    _, left, _ = _scenes()
    gone = np.full_like(left, 110)
    tracker = faces.FaceTracker(video_cfg.detector)
    boxes = _track(tracker, [left, left, left, gone, gone, gone, gone, gone, left, left])
    searches = tracker.full_searches + tracker.sized_searches + tracker.near_searches
    present = [bool(np.isfinite(box).all()) for box in boxes]
    assert present == [True] * 3 + [False] * 5 + [True] * 2
    assert np.array_equal(boxes[0], boxes[2]) and np.array_equal(boxes[8], boxes[9])
    distinct = 5  # left, gone (near miss x2, then sized + full), left again
    assert searches <= distinct + 2


def test_search_for_large_faces_only(video_cfg):
    video_cfg.detector.detect_width = 640
    detector = faces.FaceDetector(video_cfg.detector)
    frame = _two_face_frames(True)  # faces of ~86 and ~130 px
    widths = sorted(detector.detect(frame)[:, 2])
    assert len(widths) == 2
    large = detector.detect(frame, min_face=0.5 * (widths[0] + widths[1]))
    assert large.shape == (1, 4) and large[0, 2] == pytest.approx(widths[1], rel=0.15)


def _moving_face_frames(presence: list[bool]) -> list[np.ndarray]:
    """A face sliding 3 px per step over a plain scene, shown where `presence` says."""
    frames = []
    patch = face_patch(240)
    ramp = np.linspace(60, 140, 480).astype(np.uint8)  # a flat scene defeats equalisation
    for step, shown in enumerate(presence):
        frame = np.repeat(np.tile(ramp, (360, 1))[:, :, None], 3, axis=2)
        if shown:
            x = 20 + 3 * step
            frame[60:300, x : x + 240] = patch
        frames.append(frame)
    return frames


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(x1 - x0, 0) * max(y1 - y0, 0)
    return float(inter / (a[2] * a[3] + b[2] * b[3] - inter))


@pytest.mark.parametrize("track_every", [1, 2])
def test_tracker_agrees_with_a_full_search_on_every_step(video_cfg, track_every):
    """Face present / absent runs of several lengths: after smoothing (which bridges the
    cascade's single-step misses), the tracker with its skipped and interpolated steps finds a
    face on exactly the steps where a full search on every step does, with boxes in the same
    place, for a fraction of the searches."""
    presence = [True] * 20 + [False] * 11 + [True] * 9 + [False] * 5 + [True] * 17
    frames = _moving_face_frames(presence)
    reference = faces.FaceDetector(video_cfg.detector)
    smoothing = video_cfg.smoothing.max_gap_steps, video_cfg.smoothing.window_steps
    expected, expected_present = faces.smooth_boxes(
        np.stack([reference.largest(frame) for frame in frames]), *smoothing
    )
    video_cfg.detector.track_every_steps = track_every
    tracker = faces.FaceTracker(video_cfg.detector)
    boxes, present = faces.smooth_boxes(np.stack(_track(tracker, frames)), *smoothing)
    assert expected_present.tolist() == presence
    assert present.tolist() == presence
    ious = [_iou(b, e) for b, e, shown in zip(boxes, expected, presence, strict=True) if shown]
    assert min(ious) > 0.75 and np.median(ious) > 0.85
    assert tracker.full_searches < len(frames) / 4
    if track_every == 2:
        video_cfg.detector.track_every_steps = 1
        every_step = faces.FaceTracker(video_cfg.detector)
        _track(every_step, frames)
        assert tracker.near_searches < 0.8 * every_step.near_searches
