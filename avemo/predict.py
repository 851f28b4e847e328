"""Prediction on new recordings: video (+ audio) -> 40 ms arousal/valence as CSV, AVEC ARFF and PNG.

video file(s) -> streaming front ends in worker processes (`avemo.predict_frontends`: video decode
+ detection in one, audio features in another, so both cores work) -> the workdir's saved
z-normalisation (Eq. 9) -> the trained model over overlapping windows, one batch at a time
(`avemo.inference.TrainedModel.predict_streaming`) -> the saved post-processing
(`avemo.postprocess`) -> per recording `<stem>.csv`, `<stem>_arousal.arff`, `<stem>_valence.arff`,
`<stem>.png`, `<stem>.json` (its summary; written last, it marks the recording complete), and for
the whole run `summary.csv` and `summary.png` (a contact sheet of all curves).

Re-running over the same folder skips recordings whose outputs are complete (`--overwrite`
redoes them); every file is written under a temporary name and renamed, and a recording's files
are renamed together with signals held, so an interrupted run (Ctrl-C, SIGTERM) leaves either all
of a recording's outputs or none. Imperfect input gets a prediction and a note (see
`avemo.predict_frontends`); what cannot be predicted gets one error line naming the file, the
other recordings go on, and the exit status is 1.

Run: python -m avemo.predict --workdir W path/to/video.mp4 [more videos or folders]
         [--audio path.wav] [--out DIR] [--which best|latest] [--jobs N] [--overwrite]
         [--log-every SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
import multiprocessing
import os
import pathlib
import queue as queue_lib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from avemo import postprocess
from avemo import predict_frontends as frontends
from avemo.data.corpora import arff_io
from avemo.data.corpora.base import DIMENSIONS
from avemo.reporting.figures import curves_png, write_atomically

log = logging.getLogger("avemo")

VIDEO_SUFFIXES = (
    ".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".ts", ".mts",
)  # fmt: skip
CSV_COLUMNS = (
    "time", "arousal", "valence", "audio_gate", "audio_gate_arousal", "audio_gate_valence",
    "face_present", "speech_energy",
)  # fmt: skip
SUMMARY_COLUMNS = (
    "video", "duration_seconds", "steps", "arousal_mean", "arousal_sd", "valence_mean",
    "valence_sd", "face_share", "speech_share", "clipped_share", "audio_gate_mean", "warnings",
)  # fmt: skip
TMP_PREFIX = ".tmp-predict-"
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]"


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


def output_paths(out_dir: str | pathlib.Path, name: str) -> dict[str, pathlib.Path]:
    """A recording's output files; the summary (`json`) is renamed last and marks completion."""
    out_dir = pathlib.Path(out_dir)
    return {
        "csv": out_dir / f"{name}.csv",
        **{dim: out_dir / f"{name}_{dim}.arff" for dim in DIMENSIONS},
        "png": out_dir / f"{name}.png",
        "json": out_dir / f"{name}.json",
    }


def is_complete(out_dir: str | pathlib.Path, name: str) -> bool:
    return all(path.is_file() for path in output_paths(out_dir, name).values())


# ------------------------------------------------------------------------------ one recording


def make_job(
    model: Any, video_path: str | pathlib.Path, audio_path: str | pathlib.Path | None, tmp: str
) -> frontends.Job:
    """The grid of a recording: T = floor(video end / step) + 1 on the container clock.

    Raises:
      PredictError: the video cannot be opened, or the model cannot predict on recordings.
    """
    from avemo.video import io as video_io
    from avemo.video.errors import VideoError

    config = model.config
    if config.data.corpus == "memory":
        raise PredictError(
            f"{model.workdir}: trained on the in-memory corpus, whose features no front end makes"
        )
    try:
        info = video_io.probe(video_path)
    except VideoError as err:
        raise PredictError(str(err)) from err
    step = config.data.step_seconds
    if info.duration_seconds <= 0:
        raise PredictError(f"{video_path}: the container reports no duration")
    steps = math.floor(info.duration_seconds / step + video_io.TIME_TOLERANCE_SECONDS) + 1
    return frontends.Job(
        name=pathlib.Path(video_path).stem,
        video_path=os.fspath(video_path),
        audio_path=None if audio_path is None else os.fspath(audio_path),
        num_steps=steps,
        step_seconds=step,
        tmp_dir=tmp,
        config_json=config.to_json(),
        video_seconds=info.duration_seconds,
    )


def finish_recording(
    model: Any,
    job: frontends.Job,
    video: dict[str, Any],
    audio: dict[str, Any],
    params: dict[str, Any] | None,
    progress: Any = None,
) -> dict[str, Any]:
    """Both front ends' results -> normalised inputs -> model (streamed) -> post-processing."""
    from avemo.audio import normalize
    from avemo.data.pipeline import PreparedSession

    config = model.config
    started = time.perf_counter()
    channels = 1 if config.video.color_mode == "gray" else 3
    size = config.video.crop_size
    faces = frontends.StepFile(
        pathlib.Path(job.tmp_dir) / frontends.FACES_FILE, (job.num_steps, size, size, channels)
    )
    arrays = audio["arrays"]
    session = PreparedSession(
        job.name,
        "test",
        {
            "faces": faces,
            "face_present": video["face_present"],
            "audio_features": normalize.apply(
                arrays["audio_features"], model.normalizer(), arrays["audio_feature_names"]
            ),
            "speech_energy": arrays["speech_energy"],
            "logmel": arrays["logmel"],
        },
    )
    report = None if progress is None else (lambda steps: progress(steps * job.step_seconds))
    result = model.predict_streaming(session, report)
    steps = job.num_steps
    gate = result.get("audio_gate")
    gates = result.get("audio_gates")  # model.gate_per_output: [T, 2]
    face_share = float(np.mean(video["face_present"]))
    notes = list(video["notes"]) + list(audio["notes"])
    if face_share == 0:
        notes.insert(0, "no face found: the model relies on the voice")
    seconds = {**video["seconds"], **audio["seconds"], "model": time.perf_counter() - started}
    return {
        "time": np.arange(steps) * job.step_seconds,
        "outputs": postprocess.apply(
            result["outputs"],
            params,
            postprocess.face_of(result, video["face_present"]),
            postprocess.voice_of(result, session.arrays["speech_energy"]),
        ),
        "raw_outputs": np.asarray(result["outputs"], np.float32),
        "audio_gate": (
            np.full(steps, np.nan, np.float32) if gate is None else np.asarray(gate, np.float32)
        ),
        "audio_gates": (
            np.full((steps, 2), np.nan, np.float32)
            if gates is None
            else np.asarray(gates, np.float32)
        ),
        "face_present": np.asarray(video["face_present"], np.float32),
        "speech_energy": np.asarray(arrays["speech_energy"], np.float32),
        "face_share": face_share,
        "speech_share": float(audio["speech_share"]),
        "clipped_share": float(audio["clipped_share"]),
        "notes": notes,
        "seconds": seconds,
        "cpu_seconds": {**video["cpu_seconds"], **audio["cpu_seconds"]},
    }


def predict_recording(
    model: Any,
    video_path: str | pathlib.Path,
    audio_path: str | pathlib.Path | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One recording through the streaming front ends (in this process), model, post-processing.

    Args:
      model: an `avemo.inference.TrainedModel` trained on recordings (not the in-memory corpus).
      video_path: the video (any container, fps, resolution FFmpeg reads).
      audio_path: a separate audio file (any rate/channels); None uses the video's own track.
      params: fitted post-processing (`avemo.postprocess.load(workdir)`); None: raw outputs.

    Returns:
      time [T], outputs [T, 2] (post-processed arousal, valence), raw_outputs [T, 2],
      audio_gate [T] (NaN for models without a gate), audio_gates [T, 2] (the gate of each
      dimension; NaN unless `model.gate_per_output`), face_present [T], speech_energy [T],
      face_share, speech_share, clipped_share, notes (what was degraded), seconds per stage.

    Raises:
      PredictError: naming the file, when it cannot be predicted.
    """
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX) as tmp:
        job = make_job(model, video_path, audio_path, tmp)
        try:
            video = frontends.merge_video([frontends.video_task(job)])
            audio = frontends.audio_task(job)
        except ValueError as err:  # AudioError, VideoError
            raise PredictError(str(err)) from err
        except OSError as err:
            raise PredictError(f"{video_path}: {err}") from err
        return finish_recording(model, job, video, audio, params)


# ------------------------------------------------------------------------------------ outputs


def csv_text(prediction: dict[str, np.ndarray]) -> str:
    """One row per 40 ms step; audio_gate left empty where the model has none, and the
    per-dimension gates (audio_gate_arousal, audio_gate_valence: `model.gate_per_output`, whose
    audio_gate is their mean) where it has one gate."""
    lines = [",".join(CSV_COLUMNS)]
    number = lambda x: "" if np.isnan(x) else f"{x:.6f}"  # noqa: E731
    gates = prediction["audio_gates"]
    for k in range(prediction["time"].shape[0]):
        lines.append(
            f"{prediction['time'][k]:.2f},{prediction['outputs'][k, 0]:.6f},"
            f"{prediction['outputs'][k, 1]:.6f},{number(prediction['audio_gate'][k])},"
            f"{number(gates[k, 0])},{number(gates[k, 1])},"
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


def summary_record(name: str, video: str, prediction: dict[str, Any]) -> dict[str, Any]:
    """The per-recording summary (`<stem>.json`, one row of summary.csv)."""
    outputs = prediction["outputs"]
    gate = prediction["audio_gate"]
    steps = int(prediction["time"].shape[0])
    return {
        "video": video,
        "name": name,
        "duration_seconds": round(float(prediction["time"][-1]), 3),
        "steps": steps,
        "arousal_mean": float(np.mean(outputs[:, 0])),
        "arousal_sd": float(np.std(outputs[:, 0])),
        "valence_mean": float(np.mean(outputs[:, 1])),
        "valence_sd": float(np.std(outputs[:, 1])),
        "face_share": prediction["face_share"],
        "speech_share": prediction["speech_share"],
        "clipped_share": prediction["clipped_share"],
        "audio_gate_mean": None if np.all(np.isnan(gate)) else float(np.nanmean(gate)),
        "warnings": prediction["notes"],
        "seconds": {k: round(v, 3) for k, v in prediction.get("seconds", {}).items()},
        "cpu_seconds": {k: round(v, 3) for k, v in prediction.get("cpu_seconds", {}).items()},
    }


def degradation_line(record: dict[str, Any]) -> str:
    """What was degraded, e.g. `face found in 62 % of steps; 3.0 % of audio clipped`."""
    parts = [f"face found in {100 * record['face_share']:.0f} % of steps"]
    parts.append(f"speech in {100 * record['speech_share']:.0f} %")
    parts += [w for w in record["warnings"] if "no face found" not in w]
    return "; ".join(parts)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block is done (a recording's outputs appear together)."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, ValueError):  # not the main thread / no pthread_sigmask
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def write_outputs(
    out_dir: str | pathlib.Path,
    name: str,
    prediction: dict[str, Any],
    video: str = "",
) -> list[pathlib.Path]:
    """Renders every output in memory first, writes each under a temporary name, then renames
    them all (the summary json last) while SIGINT/SIGTERM are held."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = output_paths(out_dir, name)
    gate = prediction["audio_gate"]
    record = summary_record(name, video or name, prediction)
    contents = {
        paths["csv"]: csv_text(prediction),
        **{
            paths[dim]: arff_text(name, prediction["time"], prediction["outputs"][:, d])
            for d, dim in enumerate(DIMENSIONS)
        },
        paths["png"]: curves_png(
            f"{name}: predicted arousal and valence",
            prediction["time"],
            prediction["outputs"],
            None if np.all(np.isnan(gate)) else gate,
            prediction["face_present"],
            prediction["speech_energy"],
        ),
        paths["json"]: json.dumps(record, indent=2),
    }
    staged = []
    try:
        for path, data in contents.items():
            handle, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((tmp, path))
            with os.fdopen(handle, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        with _signals_held():
            for tmp, path in staged:
                os.replace(tmp, path)
            staged = []
    finally:
        for tmp, _ in staged:
            pathlib.Path(tmp).unlink(missing_ok=True)
    return list(contents)


def write_summary(out_dir: str | pathlib.Path, names: Sequence[str]) -> list[pathlib.Path]:
    """`summary.csv` (one row per complete recording) and `summary.png` (all curves)."""
    out_dir = pathlib.Path(out_dir)
    records = []
    for name in names:
        path = output_paths(out_dir, name)["json"]
        if path.is_file():
            records.append(json.loads(path.read_text()))
    if not records:
        return []
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        row = dict(record)
        row["warnings"] = "; ".join(record["warnings"])
        for key in SUMMARY_COLUMNS[3:-1]:
            if isinstance(row.get(key), float):
                row[key] = f"{row[key]:.4f}"
        writer.writerow(row)
    write_atomically(out_dir / "summary.csv", buffer.getvalue())
    write_atomically(out_dir / "summary.png", contact_sheet(out_dir, records))
    return [out_dir / "summary.csv", out_dir / "summary.png"]


def contact_sheet(out_dir: pathlib.Path, records: Sequence[dict[str, Any]]) -> bytes:
    """PNG: one small panel per recording with its arousal and valence curves (from its CSV)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    columns = min(4, len(records))
    rows = math.ceil(len(records) / columns)
    fig = Figure(figsize=(4 * columns, 2.2 * rows), dpi=80)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, record in zip(axes, records, strict=False):
        data = np.genfromtxt(
            output_paths(out_dir, record["name"])["csv"], delimiter=",", names=True
        )
        data = np.atleast_1d(data)
        stride = max(1, data.shape[0] // 4000)  # hour-long curves: plot every n-th step
        ax.plot(data["time"][::stride], data["arousal"][::stride], lw=0.8, label="arousal")
        ax.plot(data["time"][::stride], data["valence"][::stride], lw=0.8, label="valence")
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(
            f"{record['name']} (face {100 * record['face_share']:.0f} %)"
            + (" ⚠" if record["warnings"] else ""),
            fontsize=8,
        )
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in axes[len(records) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------- progress


class Progress:
    """A bar per recording (media seconds, ETA) and one across the run, on a terminal; periodic
    log lines (`every` seconds) otherwise."""

    def __init__(self, total_videos: int, every: float, stream=None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self.started = time.monotonic()
        self.done_videos = 0
        self.total = total_videos
        self.state: dict[str, dict[str, Any]] = {}
        self.last_log = -math.inf
        self.overall = None
        if self.tty:
            from tqdm import tqdm

            self.overall = tqdm(
                total=total_videos, desc="videos", unit="video", position=0, file=self.stream
            )

    def start(self, name: str, seconds: float) -> None:
        entry = {"seconds": seconds, "video": {}, "audio": 0.0, "model": 0.0, "bar": None}
        entry["started"] = time.monotonic()
        if self.tty:
            from tqdm import tqdm

            entry["bar"] = tqdm(
                total=round(seconds, 1), desc=name[:24], unit="s", leave=False,
                position=1 + len(self.state) % 4, file=self.stream,
                bar_format=BAR_FORMAT,
            )  # fmt: skip
        self.state[name] = entry

    def update(self, name: str, stage: str, seconds: float) -> None:
        entry = self.state.get(name)
        if entry is None:
            return
        if stage.startswith("video"):  # "video:<first step>" per segment
            entry["video"][stage] = max(entry["video"].get(stage, 0.0), seconds)
        else:
            entry[stage] = max(entry[stage], seconds)
        video = sum(entry["video"].values())
        # Front ends are 90 % of the work, the model the rest: one number of media seconds.
        fronts = min(video, entry["audio"])
        done = 0.9 * fronts + 0.1 * entry["model"]
        if entry["bar"] is not None:
            entry["bar"].n = min(round(done, 1), entry["bar"].total)
            entry["bar"].refresh()
        elif time.monotonic() - self.last_log >= self.every:
            self.last_log = time.monotonic()
            share = done / max(entry["seconds"], 1e-9)
            elapsed = time.monotonic() - entry["started"]
            eta = elapsed * (1 - share) / share if share > 0 else math.nan
            print(
                f"avemo.predict: {name}: {done:.0f}/{entry['seconds']:.0f} s "
                f"({100 * share:.0f} %, video {video:.0f} s, audio {entry['audio']:.0f}"
                f" s), elapsed {elapsed:.0f} s, ETA {eta:.0f} s; videos {self.done_videos}/"
                f"{self.total}",
                file=self.stream,
                flush=True,
            )

    def finish(self, name: str) -> None:
        entry = self.state.pop(name, None)
        self.done_videos += 1
        if entry is not None and entry["bar"] is not None:
            entry["bar"].close()
        if self.overall is not None:
            self.overall.update()

    def close(self) -> None:
        if self.overall is not None:
            self.overall.close()

    def write(self, line: str, error: bool = False) -> None:
        stream = sys.stderr if error else sys.stdout
        if self.tty:
            from tqdm import tqdm

            tqdm.write(line, file=stream)
        else:
            print(line, file=stream, flush=True)


# ---------------------------------------------------------------------------------- the run


class _Stop(Exception):
    """SIGTERM, turned into an exception in the main thread."""


def _clean_stale(out_dir: pathlib.Path) -> None:
    """Temporary folders of runs that are no longer alive (their pid is in the name)."""
    if not out_dir.is_dir():
        return
    for tmp in out_dir.glob(f"{TMP_PREFIX}*"):
        pid = tmp.name[len(TMP_PREFIX) :].split("-", 1)[0]
        alive = False
        if pid.isdigit():
            try:
                os.kill(int(pid), 0)
                alive = int(pid) != os.getpid()
            except OSError:
                alive = False
        if not alive:
            shutil.rmtree(tmp, ignore_errors=True)
    for tmp in out_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def run(
    model: Any,
    videos: Sequence[pathlib.Path],
    out_dir: pathlib.Path,
    params: dict[str, Any] | None,
    *,
    audio: str | None = None,
    jobs: int = 2,
    log_every: float = 30.0,
) -> int:
    """Predicts `videos` (front ends in `jobs` worker processes; 0: in this process) into
    `out_dir`; returns the number of recordings that failed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(videos), log_every)
    failed = 0
    run_tmp = pathlib.Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{TMP_PREFIX}{os.getpid()}-"))
    pool = None
    pending: dict[str, dict[str, Any]] = {}

    def fail(video: pathlib.Path, err: BaseException) -> None:
        nonlocal failed
        failed += 1
        message = str(err)
        if str(video) not in message:
            message = f"{video}: {message}"
        progress.write(f"avemo.predict: error: {message}", error=True)

    def complete(video: pathlib.Path, job: frontends.Job, video_res, audio_res) -> None:
        progress.update(job.name, "model", 0.0)
        prediction = finish_recording(
            model, job, video_res, audio_res, params,
            lambda s: progress.update(job.name, "model", s),
        )  # fmt: skip
        written = write_outputs(out_dir, job.name, prediction, str(video))
        record = json.loads(written[-1].read_text())
        progress.finish(job.name)
        progress.write(
            f"{video}: {job.num_steps} steps ({(job.num_steps - 1) * job.step_seconds:.1f} s) -> "
            f"{out_dir / job.name}.csv; {degradation_line(record)}"
        )

    try:
        if jobs > 0:
            context = multiprocessing.get_context("spawn")  # never fork a process holding JAX
            queue = context.Queue()
            pool = context.Pool(jobs, initializer=frontends.worker_init, initargs=(queue,))
        todo = list(videos)
        while todo or pending:
            # Keep at most `jobs` recordings in flight (each has a video and an audio task).
            while todo and len(pending) < max(jobs, 1):
                video = todo.pop(0)
                tmp = run_tmp / video.stem
                tmp.mkdir()
                try:
                    job = make_job(model, video, audio, str(tmp))
                except PredictError as err:
                    fail(video, err)
                    shutil.rmtree(tmp, ignore_errors=True)
                    continue
                progress.start(job.name, (job.num_steps - 1) * job.step_seconds)
                if pool is None:
                    report = lambda stage, s, n=job.name: progress.update(n, stage, s)  # noqa: E731
                    try:
                        results = {
                            "video": frontends.merge_video([frontends.video_task(job, report)]),
                            "audio": frontends.audio_task(job, report),
                        }
                        complete(video, job, results["video"], results["audio"])
                    except (ValueError, OSError) as err:
                        progress.finish(job.name)
                        fail(video, err)
                    shutil.rmtree(tmp, ignore_errors=True)
                    continue
                # The audio task first, then the video in time segments: the workers share
                # the work out (a long video keeps both cores busy).
                frontends.allocate_faces(job)
                tasks = {"audio": pool.apply_async(frontends.run_in_worker, ("audio", job))}
                for segment in frontends.segments(job.num_steps, frontends.SEGMENT_STEPS):
                    tasks[segment] = pool.apply_async(
                        frontends.run_in_worker, ("video", job, segment)
                    )
                pending[job.name] = {"video_path": video, "job": job, "tasks": tasks}
            if pool is None:
                continue
            time.sleep(0.1)
            with contextlib.suppress(queue_lib.Empty):
                while True:
                    progress.update(*queue.get_nowait())
            for name in list(pending):
                entry = pending[name]
                tasks = entry["tasks"]
                errors = [t for t in tasks.values() if t.ready() and not t.successful()]
                if not errors and not all(t.ready() for t in tasks.values()):
                    continue
                if errors and not all(t.ready() for t in tasks.values()):
                    continue  # let the other task finish before its folder goes
                del pending[name]
                try:
                    if errors:
                        errors[0].get()
                    video_parts = [t.get() for k, t in tasks.items() if k != "audio"]
                    complete(
                        entry["video_path"], entry["job"], frontends.merge_video(video_parts),
                        tasks["audio"].get(),
                    )  # fmt: skip
                except (ValueError, OSError) as err:
                    progress.finish(name)
                    fail(entry["video_path"], err)
                shutil.rmtree(entry["job"].tmp_dir, ignore_errors=True)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        shutil.rmtree(run_tmp, ignore_errors=True)
        progress.close()
    return failed


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
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="front-end worker processes (video and audio of a recording run in parallel, "
        "several recordings at once with more); 0: everything in this process",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="redo recordings whose outputs are complete"
    )
    parser.add_argument(
        "--log-every",
        type=float,
        default=30.0,
        help="seconds between progress lines when the output is not a terminal",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.jobs < 0:
        parser.error("--jobs must be >= 0")
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
    _clean_stale(out_dir)
    todo = [v for v in videos if args.overwrite or not is_complete(out_dir, v.stem)]
    if len(todo) < len(videos):
        print(
            f"avemo.predict: {len(videos) - len(todo)} of {len(videos)} videos already complete "
            f"in {out_dir}, skipped (--overwrite redoes them)",
            flush=True,
        )

    def on_term(signum, frame):
        raise _Stop()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        failed = run(
            model, todo, out_dir, params, audio=args.audio, jobs=args.jobs,
            log_every=args.log_every,
        )  # fmt: skip
    except (KeyboardInterrupt, _Stop):
        print("avemo.predict: interrupted; complete outputs kept, re-run to resume",
              file=sys.stderr)  # fmt: skip
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    written = write_summary(out_dir, [v.stem for v in videos])
    if written:
        print(f"summary: {', '.join(map(str, written))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
