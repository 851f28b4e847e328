"""Configuration keys of the video front end, declared once (composed as `config.video`).

Every key the video code reads is declared here with its default; `avemo.config.validate`
rejects unknown keys. The 40 ms label hop itself belongs to `config.data.step_seconds`.
"""

from __future__ import annotations

import ml_collections


def defaults() -> ml_collections.ConfigDict:
    """Returns the video front-end defaults (sized for CPU training; the paper's in comments)."""
    cfg = ml_collections.ConfigDict()

    # Output crop: crop_size x crop_size pixels (the paper feeds 224 x 224 RGB to its AlexNet;
    # 64 keeps CPU training fast). "gray" gives C = 1, "rgb" gives C = 3 in RGB order.
    cfg.crop_size = 64
    cfg.color_mode = "gray"
    # The detected box is widened by this fraction of its width (height) on each side before
    # cropping, so that chin, brows and forehead are inside. Parts outside the frame are black.
    cfg.margin = 0.2

    # Timing: a video covering fewer steps than asked is padded with face_present = 0 (and a
    # warning) if the uncovered tail is at most this long; a longer shortfall is a VideoError.
    cfg.max_missing_tail_seconds = 2.0

    # Haar frontal-face cascade (OpenCV's "face detection database", paper §5.2).
    cfg.detector = ml_collections.ConfigDict()
    cfg.detector.cascade = "haarcascade_frontalface_default.xml"  # in cv2.data.haarcascades
    # Detection runs on a gray copy of the frame downscaled to this width (never upscaled);
    # boxes are mapped back to source pixels. Smaller is faster but misses small faces: the
    # cascade finds faces from min_size px, reliably from ~40 px, i.e. from ~21% of the frame
    # width at 192 (160 missed faces of 23% width; 224 and 240 also found a false, larger
    # "face" on the astronaut's suit, which the largest-face rule would then pick).
    cfg.detector.detect_width = 192
    # detectMultiScale parameters, in detection-image pixels. 24 is the cascade's own window.
    cfg.detector.scale_factor = 1.1
    cfg.detector.min_neighbors = 5
    cfg.detector.min_size = 24
    # Histogram equalisation of the detection image (OpenCV's face-detection sample does it).
    cfg.detector.equalize_histogram = True
    # OpenCV worker threads for decoding and detection; 0 keeps OpenCV's own setting.
    cfg.detector.num_threads = 0
    # Tracking (speed; `avemo.video.faces.FaceTracker`): after a step with a face, the next
    # step searches only around that box, widened by track_margin x its size per side and
    # scaled so that the face is track_face_size px (just above the cascade's 24 px window:
    # ~20x cheaper than a full search), with track_min_neighbors and no histogram equalisation
    # (measured: fewer misses on such small regions). A miss there leaves that step without a
    # face (the smoother bridges it) and is retried near the same box. After track_miss_steps
    # misses in a row, and every full_detect_every_steps steps anyway, the full frame is
    # searched for faces of at least full_detect_min_ratio x the tracked one (the largest-face
    # rule only needs those; skipping the small scales makes it ~2.5x cheaper), falling back
    # to all sizes when it finds none: a phantom ends and a larger face elsewhere is taken
    # within that many steps. While no face is tracked, only every absent_detect_every_steps-th
    # step is searched in full, and when a face is found the steps in between are searched
    # backwards near it, so its appearance still lands on its own step.
    # With track_every_steps = k > 1, after a step whose face was found near the last one the
    # next k - 1 steps are not searched: their boxes are interpolated between the two searched
    # steps' (when both have a face; else each is searched on its own). Faces move little in
    # 40 ms and boxes are smoothed over window_steps anyway; k = 2 halves the near searches
    # (measured on the benchmark video: the same face_present on every step as full search
    # on every step, median box IoU with it 0.939 against 0.942 at k = 1).
    # track = False: a full search on every step (the reference the tracker is tested against).
    cfg.detector.track = True
    cfg.detector.track_margin = 0.3
    cfg.detector.track_face_size = 28
    cfg.detector.track_min_neighbors = 3
    cfg.detector.track_miss_steps = 2
    cfg.detector.full_detect_every_steps = 25
    cfg.detector.full_detect_min_ratio = 0.7
    cfg.detector.track_every_steps = 2
    cfg.detector.absent_detect_every_steps = 8

    # Temporal smoothing of the per-step boxes (largest face of each frame).
    cfg.smoothing = ml_collections.ConfigDict()
    # Runs of at most this many steps without a detection, between detections (or at the start
    # or end of the video next to one), are bridged: the box is interpolated (held at the ends)
    # and face_present stays 1. Longer runs are a real absence: face_present = 0 there.
    cfg.smoothing.max_gap_steps = 3
    # Centred moving average of box coordinates over this many steps (odd; 1 = off).
    cfg.smoothing.window_steps = 5
    return cfg
