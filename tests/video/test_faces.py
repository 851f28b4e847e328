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
    np.testing.assert_array_equal(gray[:, :, 0], cv2.cvtColor(expected, cv2.COLOR_BGR2GRAY))


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


@pytest.mark.parametrize("track", [True, False])
def test_tracker_takes_a_larger_face_within_the_full_search_interval(video_cfg, track):
    video_cfg.detector.detect_width = 640  # no downscaling: the small face is found too
    video_cfg.detector.track = track
    tracker = faces.FaceTracker(video_cfg.detector)
    boxes = [tracker.next(_two_face_frames(step >= 5)) for step in range(25)]
    small = [box for box in boxes[:5]]
    assert all(20 <= box[0] <= 150 and box[2] < 110 for box in small)
    switch = video_cfg.detector.full_detect_every_steps if track else 5
    assert all(box[0] > 300 and box[2] > 110 for box in boxes[switch:])
    if track:  # between the full searches it stays on the face it had
        assert all(box[0] < 150 for box in boxes[5:switch])
        assert tracker.near_searches > tracker.full_searches


def test_tracker_falls_back_to_full_search_when_the_face_moves_or_leaves(video_cfg):
    tracker = faces.FaceTracker(video_cfg.detector)
    scene = np.full((240, 320, 3), 110, np.uint8)
    left, right = scene.copy(), scene.copy()
    left[20:220, 0:200] = face_patch(200)
    right[40:240, 120:320] = face_patch(200)
    first, moved, gone = tracker.next(left), tracker.next(right), tracker.next(scene)
    assert first[0] < 100 and moved[0] > 140
    assert np.isnan(gone).all()
