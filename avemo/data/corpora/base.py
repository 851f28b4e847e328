"""The ``Session`` record every corpus reader returns, and the 40 ms label type.

A session names its raw files (video, audio, frame times, labels); the front ends and the
preparation cache read those files. See docs/contracts.md (Corpora).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import NamedTuple

import numpy as np

SPLITS = ("train", "dev", "test")
DIMENSIONS = ("arousal", "valence")


class CorpusError(ValueError):
    """A corpus file is missing or malformed; the message names the file."""


class Labels(NamedTuple):
    """Gold-standard labels on the step grid.

    Attributes:
      times: ``[T] float64`` seconds, ``times[k] == k * step_seconds``.
      values: ``[T, 2] float32`` columns (arousal, valence).
    """

    times: np.ndarray
    values: np.ndarray


@dataclasses.dataclass(frozen=True)
class Session:
    """One recording: where its files are and how to read its labels.

    Attributes:
      name: Session name, e.g. ``train_1`` (unique within a corpus).
      split: ``train``, ``dev`` or ``test``.
      video_path: The video file.
      audio_path: A separate audio file, or None to use the video's own track.
      frame_times_path: A ``;``-separated CSV of frame times, or None for container timestamps.
      label_paths: The files the labels come from (used in cache keys): two ARFF files
        (arousal, valence), one CSV ``time,arousal,valence``, or empty when unlabelled.
      step_seconds: The label grid step (40 ms).
    """

    name: str
    split: str
    video_path: pathlib.Path
    audio_path: pathlib.Path | None = None
    frame_times_path: pathlib.Path | None = None
    label_paths: tuple[pathlib.Path, ...] = ()
    step_seconds: float = 0.04

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise CorpusError(f"session {self.name!r}: split {self.split!r} is not one of {SPLITS}")

    @property
    def has_labels(self) -> bool:
        return bool(self.label_paths)

    def load_labels(self) -> Labels | None:
        """Reads the labels onto the step grid; None for an unlabelled session.

        Raises:
          CorpusError: naming the file, when a label file is missing or malformed.
        """
        if not self.label_paths:
            return None
        # Imported here: the readers import this module.
        from avemo.data.corpora import arff_io, folder

        if len(self.label_paths) == 2 and all(p.suffix == ".arff" for p in self.label_paths):
            return arff_io.read_label_pair(*self.label_paths, step_seconds=self.step_seconds)
        if len(self.label_paths) == 1 and self.label_paths[0].suffix == ".csv":
            return folder.read_label_csv(self.label_paths[0], step_seconds=self.step_seconds)
        raise CorpusError(f"session {self.name!r}: cannot read labels from {self.label_paths}")
