"""Reads users' own recordings (a documented folder layout) into ``Session`` records.

Layout under ROOT (only ``videos/`` is required)::

  videos/<stem>.mp4|avi|mkv|mov     one session per video
  audio/<stem>.wav                  optional separate audio (else the video's own track)
  labels/<stem>.csv                 optional labels: header ``time,arousal,valence``
  splits.csv                        optional: header ``session,split`` (train/dev/test)

Sessions without labels are ``test`` (predict-only). Labelled sessions not listed in
``splits.csv`` go to ``dev`` with probability ``dev_fraction`` (a hash of name and seed), else
``train``. Labels not on the step grid are linearly interpolated onto it (0, step, …).
"""

from __future__ import annotations

import csv
import hashlib
import os
import pathlib

import numpy as np

from avemo.data.corpora.base import SPLITS, CorpusError, Labels, Session

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")
LABEL_COLUMNS = ("time", "arousal", "valence")


def read_label_table(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parses a ``time,arousal,valence`` CSV (columns in any order, names case/space tolerant).

    Returns:
      ``(times [N] float64, values [N, 2] float64)`` as written, without any grid check.

    Raises:
      CorpusError: naming the file, when it is missing, lacks a column, or has a non-number.
    """
    path = pathlib.Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            rows = [row for row in csv.reader(stream) if any(cell.strip() for cell in row)]
    except OSError as error:
        raise CorpusError(f"{path}: cannot read ({error.strerror or error})") from None
    if not rows:
        raise CorpusError(f"{path}: empty label file")
    header = [cell.strip().lower() for cell in rows[0]]
    if any(column not in header for column in LABEL_COLUMNS):
        raise CorpusError(f"{path}: header is {rows[0]}, expected columns {list(LABEL_COLUMNS)}")
    columns = [header.index(column) for column in LABEL_COLUMNS]
    table = np.empty((len(rows) - 1, 3))
    for number, row in enumerate(rows[1:], start=2):
        try:
            table[number - 2] = [float(row[column]) for column in columns]
        except (ValueError, IndexError):
            raise CorpusError(f"{path}: line {number} is not three numbers: {row}") from None
    return table[:, 0], table[:, 1:]


def read_label_csv(path: str | os.PathLike, step_seconds: float = 0.04) -> Labels:
    """Reads a label CSV onto the step grid (linear interpolation when off-grid).

    Raises:
      CorpusError: naming the file, on NaNs, fewer than two rows or times that do not increase.
    """
    times, values = read_label_table(path)
    if times.size < 2:
        raise CorpusError(f"{path}: fewer than two label rows")
    if not np.all(np.isfinite(times)) or not np.all(np.isfinite(values)):
        raise CorpusError(f"{path}: missing or NaN values")
    if np.any(np.diff(times) <= 0):
        raise CorpusError(f"{path}: times are not increasing")
    num_steps = int(np.floor(times[-1] / step_seconds + 1e-6)) + 1
    grid = np.arange(num_steps) * step_seconds
    if times.size == num_steps and np.allclose(times, grid, atol=1e-4):
        return Labels(grid, values.astype(np.float32))
    resampled = np.stack([np.interp(grid, times, values[:, d]) for d in range(2)], axis=1)
    return Labels(grid, resampled.astype(np.float32))


def _hashed_fraction(name: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()
    return int(digest[:8], 16) / 2**32


def read_splits(path: pathlib.Path) -> dict[str, str]:
    """Parses ``splits.csv`` (``session,split``)."""
    with path.open(newline="", encoding="utf-8") as stream:
        rows = [row for row in csv.reader(stream) if any(cell.strip() for cell in row)]
    if not rows or [cell.strip().lower() for cell in rows[0][:2]] != ["session", "split"]:
        raise CorpusError(f"{path}: the first line must be the header 'session,split'")
    splits = {}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) < 2 or row[1].strip() not in SPLITS:
            raise CorpusError(
                f"{path}: line {number}: expected 'session,split' with split in {SPLITS}"
            )
        splits[row[0].strip()] = row[1].strip()
    return splits


def read_sessions(
    root: str | os.PathLike,
    step_seconds: float = 0.04,
    dev_fraction: float = 0.0,
    split_seed: int = 0,
) -> list[Session]:
    """Lists the sessions of a users' folder (see the module docstring for the layout).

    Raises:
      CorpusError: naming the file or folder, when the layout is broken.
    """
    root = pathlib.Path(root)
    video_dir = root / "videos"
    if not video_dir.is_dir():
        raise CorpusError(f"{video_dir}: no videos folder (expected ROOT/videos/<stem>.mp4)")
    videos = sorted(p for p in video_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise CorpusError(f"{video_dir}: no videos ({', '.join(VIDEO_SUFFIXES)})")
    stems = [video.stem for video in videos]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise CorpusError(f"{video_dir}: several videos share the stem(s) {duplicates}")
    splits_path = root / "splits.csv"
    assigned = read_splits(splits_path) if splits_path.is_file() else {}
    unknown = sorted(set(assigned) - set(stems))
    if unknown:
        raise CorpusError(f"{splits_path}: sessions without a video: {unknown}")

    sessions = []
    for video in videos:
        name = video.stem
        audio = root / "audio" / f"{name}.wav"
        labels = root / "labels" / f"{name}.csv"
        if name in assigned:
            split = assigned[name]
        elif not labels.is_file():
            split = "test"
        else:
            split = "dev" if _hashed_fraction(name, split_seed) < dev_fraction else "train"
        if split != "test" and not labels.is_file():
            raise CorpusError(f"{labels}: missing, but {name!r} is in the {split!r} split")
        sessions.append(
            Session(
                name=name,
                split=split,
                video_path=video,
                audio_path=audio if audio.is_file() else None,
                frame_times_path=None,
                label_paths=(labels,) if labels.is_file() else (),
                step_seconds=step_seconds,
            )
        )
    return sessions
