"""Prediction on new recordings: video (+ audio) -> 40 ms arousal/valence as CSV, AVEC ARFF and PNG.

video file(s) -> the training front ends (`prepare.run_front_ends`) -> the workdir's saved
z-normalisation (Eq. 9) -> the trained model (`avemo.inference`) -> the saved post-processing
(`avemo.postprocess`) -> per recording `<stem>.csv`, `<stem>_arousal.arff`,
`<stem>_valence.arff`, `<stem>.png`.

Run: python -m avemo.predict --workdir W path/to/video.mp4 [more videos or folders]
         [--audio path.wav] [--out DIR] [--which best|latest]
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from avemo import postprocess
from avemo.data.corpora import arff_io
from avemo.data.corpora.base import DIMENSIONS, Session
from avemo.reporting.figures import curves_png, write_atomically

log = logging.getLogger("avemo")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v")
CSV_COLUMNS = ("time", "arousal", "valence", "audio_gate", "face_present", "speech_energy")


class PredictError(ValueError):
    """A recording cannot be predicted; the message names the file."""


def find_videos(paths: Sequence[str | pathlib.Path]) -> list[pathlib.Path]:
    """Video files named directly, plus those inside named folders (sorted, not recursive).

    Raises:
      PredictError: a path that does not exist, an empty folder, or two recordings with one stem.
    """
    videos: list[pathlib.Path] = []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise PredictError(f"{path}: no video files ({', '.join(VIDEO_SUFFIXES)})")
            videos += found
        elif path.is_file():
            videos.append(path)
        else:
            raise PredictError(f"{path}: no such file or folder")
    stems: dict[str, pathlib.Path] = {}
    for video in videos:
        if video.stem in stems:
            raise PredictError(
                f"{video}: same name as {stems[video.stem]}; outputs would overwrite each other"
            )
        stems[video.stem] = video
    return videos


def predict_recording(
    model: Any,
    video_path: str | pathlib.Path,
    audio_path: str | pathlib.Path | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """One recording through front ends, saved normalisation, model and post-processing.

    Args:
      model: an `avemo.inference.TrainedModel` trained on recordings (not the in-memory corpus).
      video_path: the video (any fps/resolution the video front end reads).
      audio_path: a separate audio file (any rate/channels); None uses the video's own track.
      params: fitted post-processing (`avemo.postprocess.load(workdir)`); None: raw outputs.

    Returns:
      time [T], outputs [T, 2] (post-processed arousal, valence), raw_outputs [T, 2],
      audio_gate [T] (NaN for models without a gate), face_present [T], speech_energy [T].

    Raises:
      PredictError: naming the file, when a front end cannot use it.
    """
    from avemo.audio.errors import AudioError
    from avemo.data import prepare
    from avemo.video.errors import VideoError

    config = model.config
    if config.data.corpus == "memory":
        raise PredictError(
            f"{model.workdir}: trained on the in-memory corpus, whose features no front end makes"
        )
    video_path = pathlib.Path(video_path)
    session = Session(
        name=video_path.stem,
        split="test",
        video_path=video_path,
        audio_path=None if audio_path is None else pathlib.Path(audio_path),
        step_seconds=config.data.step_seconds,
    )
    try:
        raw = prepare.run_front_ends(session, config)
        prepared = prepare.to_prepared(session, raw, model.normalizer())
    except (AudioError, VideoError) as err:
        raise PredictError(str(err)) from err
    except (OSError, ValueError) as err:
        raise PredictError(f"{video_path}: {err}") from err
    result = model.predict([prepared])[session.name]
    steps = prepared.num_steps
    gate = result.get("audio_gate")
    return {
        "time": np.arange(steps) * config.data.step_seconds,
        "outputs": postprocess.apply(result["outputs"], params),
        "raw_outputs": np.asarray(result["outputs"], np.float32),
        "audio_gate": (
            np.full(steps, np.nan, np.float32) if gate is None else np.asarray(gate, np.float32)
        ),
        "face_present": np.asarray(prepared.arrays["face_present"], np.float32),
        "speech_energy": np.asarray(prepared.arrays["speech_energy"], np.float32),
    }


def csv_text(prediction: dict[str, np.ndarray]) -> str:
    """One row per 40 ms step; audio_gate left empty where the model has none."""
    lines = [",".join(CSV_COLUMNS)]
    for k in range(prediction["time"].shape[0]):
        gate = prediction["audio_gate"][k]
        lines.append(
            f"{prediction['time'][k]:.2f},{prediction['outputs'][k, 0]:.6f},"
            f"{prediction['outputs'][k, 1]:.6f},{'' if np.isnan(gate) else f'{gate:.6f}'},"
            f"{int(prediction['face_present'][k])},{prediction['speech_energy'][k]:.6f}"
        )
    return "\n".join(lines) + "\n"


def arff_text(name: str, times: np.ndarray, values: np.ndarray) -> str:
    """One dimension in the AVEC2016 gold-standard ARFF format (the layout `arff_io` reads)."""
    import arff

    times = np.round(np.asarray(times, np.float64), arff_io.DECIMALS)
    values = np.round(np.asarray(values, np.float64), arff_io.DECIMALS)
    document = {
        "relation": arff_io.RELATION,
        "attributes": [
            ("Instance_name", "STRING"),
            ("frameTime", "NUMERIC"),
            ("GoldStandard", "NUMERIC"),
        ],
        "data": [[name, float(t), float(v)] for t, v in zip(times, values, strict=True)],
    }
    return arff.dumps(document) + "\n"


def write_outputs(
    out_dir: str | pathlib.Path, name: str, prediction: dict[str, np.ndarray]
) -> list[pathlib.Path]:
    """Renders every output in memory first, then writes each atomically (temp name, rename)."""
    out_dir = pathlib.Path(out_dir)
    gate = prediction["audio_gate"]
    contents = {
        out_dir / f"{name}.csv": csv_text(prediction),
        **{
            out_dir / f"{name}_{dim}.arff": arff_text(
                name, prediction["time"], prediction["outputs"][:, d]
            )
            for d, dim in enumerate(DIMENSIONS)
        },
        out_dir / f"{name}.png": curves_png(
            f"{name}: predicted arousal and valence",
            prediction["time"],
            prediction["outputs"],
            None if np.all(np.isnan(gate)) else gate,
            prediction["face_present"],
            prediction["speech_energy"],
        ),
    }
    for path, data in contents.items():
        write_atomically(path, data)
    return list(contents)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avemo.predict",
        description="Arousal/valence every 40 ms for new recordings, with a trained workdir.",
    )
    parser.add_argument("--workdir", required=True, help="a trained avemo workdir")
    parser.add_argument("inputs", nargs="+", help="video files or folders of videos")
    parser.add_argument("--audio", help="separate audio for a single video (else its own track)")
    parser.add_argument("--out", help="output folder (default: WORKDIR/predictions)")
    parser.add_argument("--which", choices=("best", "latest"), default="best")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from avemo.inference import NoModelError, load

    try:
        videos = find_videos(args.inputs)
        if args.audio is not None and len(videos) != 1:
            raise PredictError(f"{args.audio}: --audio needs exactly one video, got {len(videos)}")
        model = load(args.workdir, args.which)
        params = postprocess.load(model.workdir, model.step)  # fitted on this checkpoint
    except (PredictError, NoModelError, ValueError) as err:
        print(f"avemo.predict: error: {err}", file=sys.stderr)
        return 1
    if params is None:
        log.warning(
            "%s has no %s: predictions are not post-processed.", args.workdir, "postprocess.json"
        )
    out_dir = pathlib.Path(args.out) if args.out else pathlib.Path(model.workdir) / "predictions"
    failed = 0
    for video in videos:
        try:
            prediction = predict_recording(model, video, args.audio, params)
            written = write_outputs(out_dir, video.stem, prediction)
        except (PredictError, OSError) as err:
            print(f"avemo.predict: error: {err}", file=sys.stderr)
            failed += 1
            continue
        print(f"{video}: {prediction['time'].shape[0]} steps -> {', '.join(map(str, written))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
