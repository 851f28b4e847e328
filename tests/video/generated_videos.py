"""Generated test videos for the video front end: a real face photograph pasted on a background.

Frames carry their own index as an 8-bit barcode in the top rows, so a test can tell which
decoded frame a step received.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import skimage.data

WIDTH, HEIGHT = 320, 240
BARCODE_BITS = 8
BARCODE_HEIGHT = 24
# Where the face patch goes in a 320 x 240 frame, and its size (the face is ~73 px wide).
FACE_ORIGIN = (120, 50)
FACE_PATCH = 170


def astronaut_bgr() -> np.ndarray:
    """scikit-image's astronaut photograph (Eileen Collins), BGR uint8 512 x 512."""
    return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)


def face_patch(size: int = FACE_PATCH) -> np.ndarray:
    """The astronaut's head and shoulders around the face, resized to size x size (BGR)."""
    return cv2.resize(astronaut_bgr()[10:230, 115:335], (size, size), interpolation=cv2.INTER_AREA)


def background() -> np.ndarray:
    """A plain gradient background without faces (BGR)."""
    ramp = np.linspace(60, 140, WIDTH, dtype=np.float32)[None, :, None]
    return np.broadcast_to(ramp, (HEIGHT, WIDTH, 3)).astype(np.uint8).copy()


def draw_barcode(frame: np.ndarray, index: int) -> None:
    block = WIDTH // BARCODE_BITS
    for bit in range(BARCODE_BITS):
        value = 255 if (index >> bit) & 1 else 0
        frame[:BARCODE_HEIGHT, bit * block : (bit + 1) * block] = value


def read_barcode(frame: np.ndarray) -> int:
    width = frame.shape[1]
    block = width // BARCODE_BITS
    index = 0
    for bit in range(BARCODE_BITS):
        patch = frame[4 : BARCODE_HEIGHT - 4, bit * block + 4 : (bit + 1) * block - 4]
        if patch.mean() > 127:
            index |= 1 << bit
    return index


def make_frame(index: int, with_face: bool) -> np.ndarray:
    frame = background()
    if with_face:
        x, y = FACE_ORIGIN
        frame[y : y + FACE_PATCH, x : x + FACE_PATCH] = face_patch()
    draw_barcode(frame, index)
    return frame


def write_video(
    path: str | os.PathLike[str],
    num_frames: int,
    fps: float,
    face_in_frame=lambda index: True,
    fourcc: str = "mp4v",
) -> str:
    """Writes a barcoded video; face_in_frame(index) says whether frame index shows the face."""
    path = os.fspath(path)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, (WIDTH, HEIGHT))
    assert writer.isOpened(), path
    for index in range(num_frames):
        writer.write(make_frame(index, face_in_frame(index)))
    writer.release()
    return path
