"""Benchmark of the video front end: frames/s of decode + detect + crop on a 640x480 video.

Run: `python -m avemo.bench video [--seconds 20] [--threads 0]`. Prints the end-to-end rate of
`avemo.video.frontend.extract` and, from a separately timed pass, the share of each stage.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence

import cv2
import numpy as np
import skimage.data

from avemo.video import config, faces, frontend, io

WIDTH, HEIGHT, FPS = 640, 480, 25.0
GOAL_FRAMES_PER_SECOND = 250.0  # a 5-minute 25 fps session (7500 frames) in 30 s


def write_face_video(path: str, num_frames: int) -> None:
    """A 640x480 25 fps mp4v video: the astronaut's head (face ~150 px) drifting on a gradient."""
    head = cv2.cvtColor(skimage.data.astronaut()[0:240, 110:350], cv2.COLOR_RGB2BGR)
    head = cv2.resize(head, (360, 360), interpolation=cv2.INTER_AREA)
    ramp = np.linspace(50, 170, WIDTH, dtype=np.float32)
    background = np.broadcast_to(ramp[None, :, None], (HEIGHT, WIDTH, 3)).astype(np.uint8)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    rng = np.random.default_rng(0)
    for index in range(num_frames):
        frame = background.copy()
        x = 140 + int(40 * np.sin(index / 40))
        y = 60 + int(20 * np.cos(index / 55))
        frame[y : y + 360, x : x + 360] = head
        noise = rng.integers(-4, 5, frame.shape, dtype=np.int16)
        writer.write(np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    writer.release()


def stage_split(path: str, num_steps: int, cfg) -> tuple[dict[str, float], faces.FaceTracker]:
    """Seconds spent in each stage of one pass that mirrors `extract`, and its face tracker."""
    tracker = faces.FaceTracker(cfg.detector)
    smoother = faces.StreamingBoxSmoother(cfg.smoothing.max_gap_steps, cfg.smoothing.window_steps)
    seconds = {"decode + timing": 0.0, "detect": 0.0, "smooth + crop": 0.0}
    waiting: dict[int, np.ndarray] = {}
    clock = time.perf_counter()

    def smooth_and_crop(boxes: list[np.ndarray]) -> None:
        for box in boxes:
            for final_step, final_box, present in smoother.push(box):
                frame_at_step = waiting.pop(final_step)
                if present:
                    faces.crop_face(
                        frame_at_step, final_box, cfg.crop_size, cfg.color_mode, cfg.margin
                    )

    gray = cfg.color_mode == "gray"
    for step, _, frame in io.step_frames(path, num_steps, 0.04, gray=gray):
        now = time.perf_counter()
        seconds["decode + timing"] += now - clock
        boxes = tracker.push(frame)
        clock = time.perf_counter()
        seconds["detect"] += clock - now
        waiting[step] = frame
        smooth_and_crop(boxes)
        now = time.perf_counter()
        seconds["smooth + crop"] += now - clock
        clock = now
    boxes = tracker.finish()
    now = time.perf_counter()
    seconds["detect"] += now - clock
    smooth_and_crop(boxes)
    for final_step, final_box, present in smoother.finish():
        if present:
            frame_at_step = waiting[final_step]
            faces.crop_face(frame_at_step, final_box, cfg.crop_size, cfg.color_mode, cfg.margin)
    seconds["smooth + crop"] += time.perf_counter() - now
    return seconds, tracker


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avemo.bench video", description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the test video")
    parser.add_argument("--threads", type=int, default=0, help="cv2.setNumThreads (0: as is)")
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--color-mode", default="gray", choices=("gray", "rgb"))
    parser.add_argument(
        "--no-track", action="store_true", help="full-frame detection on every step (baseline)"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)

    cfg = config.defaults()
    cfg.detector.num_threads = args.threads
    cfg.crop_size = args.crop_size
    cfg.color_mode = args.color_mode
    cfg.detector.track = not args.no_track
    if args.threads > 0:
        cv2.setNumThreads(args.threads)
    num_frames = round(args.seconds * FPS)
    with tempfile.TemporaryDirectory() as workdir:
        path = os.path.join(workdir, "bench.mp4")
        write_face_video(path, num_frames)
        num_steps = num_frames  # 25 fps: one frame per 40 ms step

        start = time.perf_counter()
        result = frontend.extract(path, num_steps, cfg)
        total = time.perf_counter() - start
        split, tracker = stage_split(path, num_steps, cfg)

    rate = num_frames / total
    print(f"video front end: {WIDTH}x{HEIGHT} {FPS:g} fps mp4v, {num_frames} frames")
    print(
        f"  OpenCV threads {cv2.getNumThreads()}, cpus {os.cpu_count()}, detect width "
        f"{cfg.detector.detect_width}, scaleFactor {cfg.detector.scale_factor}, "
        f"minNeighbors {cfg.detector.min_neighbors}, crop {cfg.crop_size} {cfg.color_mode}"
    )
    print(
        f"  faces found on {result['face_present'].mean():.1%} of steps; searches: "
        f"{tracker.full_searches} full frame, {tracker.sized_searches} full frame for large "
        f"faces only, {tracker.near_searches} near the previous face"
    )
    print(f"  extract: {total:.2f} s = {rate:.0f} frames/s (goal {GOAL_FRAMES_PER_SECOND:.0f})")
    print(f"  5-minute session (7500 frames) would take {7500 / rate:.1f} s")
    split_total = sum(split.values())
    for stage, seconds in split.items():
        print(
            f"  {stage:>16}: {seconds:6.2f} s  {1000 * seconds / num_frames:6.2f} ms/frame  "
            f"{seconds / split_total:5.1%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
