"""Checks a corpus copy before training: every missing or malformed file, each named.

``python -m avemo.data.validate --corpus avec2016 --root DIR`` prints one line per finding and
exits 1 when there is an error (warnings alone exit 0, or 1 with ``--strict``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys

import cv2
import numpy as np
import soundfile

from avemo.data.corpora import arff_io, avec2016, folder
from avemo.data.corpora.base import DIMENSIONS, CorpusError

ERROR, WARNING = "error", "warning"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem: how bad, which file, what."""

    severity: str
    path: pathlib.Path
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}"


def expected_steps(duration_seconds: float, step_seconds: float) -> int:
    """Label rows for a recording of this duration: 0 … duration inclusive."""
    return int(np.floor(duration_seconds / step_seconds + 1e-6)) + 1


def _audio_duration(path: pathlib.Path, findings: list[Finding]) -> float | None:
    try:
        info = soundfile.info(str(path))
    except Exception as error:  # soundfile raises its own LibsndfileError or RuntimeError.
        findings.append(Finding(ERROR, path, f"audio unreadable by soundfile ({error})"))
        return None
    if info.frames == 0:
        findings.append(Finding(ERROR, path, "audio has no samples"))
        return None
    return info.frames / info.samplerate


def _video_frame_count(path: pathlib.Path, findings: list[Finding]) -> int | None:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            findings.append(Finding(ERROR, path, "video unreadable by OpenCV"))
            return None
        ok, _ = capture.read()
        if not ok:
            findings.append(Finding(ERROR, path, "video has no decodable frame"))
            return None
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()


def check_frame_times(path: pathlib.Path, frame_count: int | None, findings: list[Finding]) -> None:
    """Parsed by the reader's own parser (`avemo.video.io.parse_frame_times`): the same layouts
    are accepted; an absolute-clock start (subtracted by the reader) is a warning."""
    from avemo.video.errors import VideoError
    from avemo.video.io import parse_frame_times

    try:
        times, notes = parse_frame_times(path)
    except VideoError as error:
        problem = error.problem
        if "backwards" in problem:
            problem = f"frame times are not increasing ({problem.removeprefix('frame times ')})"
        findings.append(Finding(ERROR, path, problem))
        return
    except (OSError, UnicodeDecodeError) as error:
        findings.append(Finding(ERROR, path, f"frame times unreadable ({error})"))
        return
    findings.extend(Finding(WARNING, path, note) for note in notes if "absolute" in note)
    repeated = int(np.count_nonzero(np.diff(times) == 0))
    if repeated:
        findings.append(Finding(WARNING, path, f"{repeated} repeated frame times"))
    if frame_count is not None and abs(times.size - frame_count) > 1:
        findings.append(
            Finding(
                WARNING, path, f"{times.size} frame times but the video has {frame_count} frames"
            )
        )


def check_gold_standard(
    path: pathlib.Path, name: str, step_seconds: float, findings: list[Finding]
) -> int | None:
    """Checks one ARFF file; returns its row count (None when unreadable)."""
    try:
        gold = arff_io.read_gold_standard(path)
    except CorpusError as error:
        findings.append(Finding(ERROR, path, str(error).removeprefix(f"{path}: ")))
        return None
    findings.extend(Finding(WARNING, path, warning) for warning in gold.warnings)
    findings.extend(
        Finding(ERROR, path, problem) for problem in arff_io.grid_problems(gold.times, step_seconds)
    )
    missing = int(np.sum(~np.isfinite(gold.values)))
    if missing:
        findings.append(Finding(ERROR, path, f"{missing} missing or NaN GoldStandard values"))
    finite = gold.values[np.isfinite(gold.values)]
    if finite.size and np.max(np.abs(finite)) > 1.0:
        findings.append(Finding(WARNING, path, "values outside [-1, 1]"))
    others = sorted({instance for instance in gold.instance_names if instance != name})
    if others:
        findings.append(Finding(WARNING, path, f"Instance_name {others[:3]} differs from {name!r}"))
    return gold.times.size


def validate_avec2016(root: str | os.PathLike, step_seconds: float = 0.04) -> list[Finding]:
    """Every finding for a copy in the AVEC2016 release layout (see ``avec2016``)."""
    root = pathlib.Path(root)
    findings: list[Finding] = []
    if not root.is_dir():
        return [Finding(ERROR, root, "corpus root does not exist")]
    for folder_name in (avec2016.VIDEO_DIR, avec2016.AUDIO_DIR):
        if not (root / folder_name).is_dir():
            findings.append(Finding(ERROR, root / folder_name, "folder missing"))
    if not (root / avec2016.FRAME_TIME_DIR).is_dir():
        findings.append(
            Finding(
                WARNING, root / avec2016.FRAME_TIME_DIR, "folder missing (container times used)"
            )
        )
    names = avec2016.session_names(root)
    if not names and not findings:
        findings.append(Finding(ERROR, root / avec2016.VIDEO_DIR, "no sessions found"))

    for folder_name, suffix in (
        (avec2016.VIDEO_DIR, ".mp4"),
        (avec2016.AUDIO_DIR, ".wav"),
        (avec2016.FRAME_TIME_DIR, ".csv"),
        *((f"{avec2016.LABEL_DIR}/{d}", ".arff") for d in DIMENSIONS),
    ):
        directory = root / folder_name
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path.name.startswith("."):
                continue
            if path.suffix != suffix or not avec2016.SESSION_NAME.match(path.stem):
                findings.append(Finding(WARNING, path, "unexpected file name (ignored)"))
            elif path.stem not in names:
                findings.append(Finding(ERROR, path, "no recording for this session"))

    for name in names:
        split = avec2016.SESSION_NAME.match(name).group(1)
        video = root / avec2016.VIDEO_DIR / f"{name}.mp4"
        audio = root / avec2016.AUDIO_DIR / f"{name}.wav"
        frame_times = root / avec2016.FRAME_TIME_DIR / f"{name}.csv"
        frame_count = duration = None
        if video.is_file():
            frame_count = _video_frame_count(video, findings)
        else:
            findings.append(Finding(ERROR, video, "video missing"))
        if audio.is_file():
            duration = _audio_duration(audio, findings)
        else:
            findings.append(Finding(ERROR, audio, "audio missing"))
        if frame_times.is_file():
            check_frame_times(frame_times, frame_count, findings)
        elif (root / avec2016.FRAME_TIME_DIR).is_dir():
            findings.append(Finding(WARNING, frame_times, "frame times missing"))

        labels = avec2016.label_paths(root, name)
        present = {d: p for d, p in labels.items() if p.is_file()}
        if not present and split == "test":
            continue  # Test labels are not public.
        rows = {}
        for dimension, path in labels.items():
            if dimension not in present:
                findings.append(Finding(ERROR, path, f"{dimension} gold standard missing"))
                continue
            rows[dimension] = check_gold_standard(path, name, step_seconds, findings)
        if len(rows) == 2 and None not in rows.values() and rows["arousal"] != rows["valence"]:
            findings.append(
                Finding(
                    ERROR,
                    labels["valence"],
                    f"{rows['valence']} rows but arousal has {rows['arousal']}",
                )
            )
        counted = [count for count in rows.values() if count is not None]
        if duration is not None and counted:
            wanted = expected_steps(duration, step_seconds)
            if abs(counted[0] - wanted) > 1:
                findings.append(
                    Finding(
                        ERROR,
                        labels["arousal"] if rows.get("arousal") else labels["valence"],
                        f"{counted[0]} rows but the {duration:.2f} s audio needs {wanted} "
                        f"({step_seconds:g} s steps)",
                    )
                )
    return findings


def validate_folder(
    root: str | os.PathLike, step_seconds: float = 0.04, dev_fraction: float = 0.0, split_seed=0
) -> list[Finding]:
    """Every finding for users' own data (see ``folder``)."""
    root = pathlib.Path(root)
    try:
        sessions = folder.read_sessions(root, step_seconds, dev_fraction, split_seed)
    except CorpusError as error:
        return [Finding(ERROR, root, str(error))]
    findings: list[Finding] = []
    for session in sessions:
        _video_frame_count(session.video_path, findings)
        duration = _audio_duration(session.audio_path, findings) if session.audio_path else None
        for path in session.label_paths:
            try:
                times, values = folder.read_label_table(path)
                session.load_labels()
            except CorpusError as error:
                findings.append(Finding(ERROR, path, str(error).removeprefix(f"{path}: ")))
                continue
            grid = np.arange(times.size) * step_seconds
            if times.size != grid.size or not np.allclose(times, grid, atol=1e-4):
                findings.append(
                    Finding(
                        WARNING,
                        path,
                        f"times are not on the {step_seconds:g} s grid "
                        "from 0; they will be interpolated",
                    )
                )
            if duration is not None and times[-1] > duration + step_seconds:
                findings.append(
                    Finding(ERROR, path, f"labels run to {times[-1]:.2f} s, audio {duration:.2f} s")
                )
    return findings


def validate(corpus: str, root: str | os.PathLike, step_seconds: float = 0.04) -> list[Finding]:
    """Findings for ``corpus`` ("avec2016", "synthetic" (same layout) or "folder") at ``root``."""
    if corpus in ("avec2016", "synthetic"):
        return validate_avec2016(root, step_seconds)
    if corpus == "folder":
        return validate_folder(root, step_seconds)
    raise ValueError(f"unknown corpus kind {corpus!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="avec2016", choices=["avec2016", "synthetic", "folder"])
    parser.add_argument("--root", required=True)
    parser.add_argument("--step-seconds", type=float, default=0.04)
    parser.add_argument("--strict", action="store_true", help="warnings also fail")
    args = parser.parse_args(argv)
    findings = validate(args.corpus, args.root, args.step_seconds)
    for finding in findings:
        print(finding)
    errors = sum(finding.severity == ERROR for finding in findings)
    print(f"{errors} error(s), {len(findings) - errors} warning(s) in {args.root}")
    failed = errors or (args.strict and findings)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
