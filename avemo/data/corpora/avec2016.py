"""Reads the official AVEC2016/RECOLA release layout into ``Session`` records.

Layout under ROOT (the embedded corpus writes the same)::

  recordings_audio/{train,dev,test}_{k}.wav
  recordings_video/{split}_{k}.mp4
  recordings_video_frame_time/{split}_{k}.csv      (";"-separated, header, then frame;time)
  ratings_gold_standard/{arousal,valence}/{split}_{k}.arff   (none for the test split)

Run ``python -m avemo.data.validate --corpus avec2016 --root ROOT`` for a full check of a copy.
"""

from __future__ import annotations

import os
import pathlib
import re

from avemo.data.corpora.base import DIMENSIONS, SPLITS, CorpusError, Session

AUDIO_DIR = "recordings_audio"
VIDEO_DIR = "recordings_video"
FRAME_TIME_DIR = "recordings_video_frame_time"
LABEL_DIR = "ratings_gold_standard"
SESSION_NAME = re.compile(r"^(train|dev|test)_(\d+)$")


def session_sort_key(name: str) -> tuple[int, int, str]:
    match = SESSION_NAME.match(name)
    if not match:
        return (len(SPLITS), 0, name)
    return (SPLITS.index(match.group(1)), int(match.group(2)), name)


def session_names(root: pathlib.Path) -> list[str]:
    """Names of the sessions that have a video or an audio recording, in split/index order."""
    names = set()
    for folder, suffix in ((VIDEO_DIR, ".mp4"), (AUDIO_DIR, ".wav")):
        if (root / folder).is_dir():
            names.update(
                path.stem
                for path in (root / folder).iterdir()
                if path.suffix == suffix and SESSION_NAME.match(path.stem)
            )
    return sorted(names, key=session_sort_key)


def label_paths(root: pathlib.Path, name: str) -> dict[str, pathlib.Path]:
    return {dimension: root / LABEL_DIR / dimension / f"{name}.arff" for dimension in DIMENSIONS}


def read_sessions(root: str | os.PathLike, step_seconds: float = 0.04) -> list[Session]:
    """Lists the sessions of an AVEC2016-layout corpus.

    Test sessions need no label files; train and dev sessions need both dimensions.

    Raises:
      CorpusError: listing every missing file (run the validator for malformed contents).
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise CorpusError(f"{root}: corpus root does not exist")
    names = session_names(root)
    if not names:
        raise CorpusError(
            f"{root}: no sessions found (expected {VIDEO_DIR}/{{train,dev,test}}_<k>.mp4)"
        )
    sessions, missing = [], []
    for name in names:
        split = SESSION_NAME.match(name).group(1)
        video = root / VIDEO_DIR / f"{name}.mp4"
        audio = root / AUDIO_DIR / f"{name}.wav"
        frame_times = root / FRAME_TIME_DIR / f"{name}.csv"
        labels = label_paths(root, name)
        missing += [path for path in (video, audio) if not path.is_file()]
        present = [path for path in labels.values() if path.is_file()]
        if split != "test" or present:
            missing += [path for path in labels.values() if not path.is_file()]
        sessions.append(
            Session(
                name=name,
                split=split,
                video_path=video,
                audio_path=audio,
                frame_times_path=frame_times if frame_times.is_file() else None,
                label_paths=tuple(labels.values()) if present else (),
                step_seconds=step_seconds,
            )
        )
    if missing:
        listed = "\n  ".join(str(path) for path in missing)
        raise CorpusError(f"{root}: {len(missing)} missing file(s):\n  {listed}")
    return sessions
