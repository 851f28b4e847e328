"""Evaluation reports of a workdir: tables, plots, missing-modality protocol, post-processing.

trained workdir -> predictions on whole sessions (normal inputs and three degraded ones) ->
post-processing fitted on dev (`avemo.postprocess`, saved as `workdir/postprocess.json`) ->
CCC / RMSE / R² per session and pooled (Eq. 34-37), β-vs-modality correlation ->
`workdir/reports/` (Markdown, CSV, JSON, PNG).

Run: python -m avemo.evaluate --workdir W [--splits dev] [--which best|latest]

Missing-modality protocol (robustness as a number):
  face_removed    faces zeroed, face_present 0 everywhere;
  audio_silenced  the audio front end run on silence of the session's length, normalised with the
                  saved statistics (Eq. 9), speech_energy 0;
  far_field       the session's own audio attenuated (25 dB), low-passed (1.8 kHz) and
                  reverberated, then through the audio front end.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import os
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from avemo import metrics as metrics_lib
from avemo import postprocess
from avemo.data.pipeline import PreparedSession
from avemo.metrics import DIMENSIONS
from avemo.reporting.figures import curves_png, write_atomically

log = logging.getLogger("avemo")

REPORT_DIR = "reports"
PROTOCOLS = ("normal", "face_removed", "audio_silenced", "far_field")
# Far-field speech: a quiet, distant talker in a reverberant room.
FAR_FIELD_ATTENUATION_DB = 25.0
FAR_FIELD_CUTOFF_HZ = 1800.0
FAR_FIELD_DECAY_SECONDS = 0.12  # amplitude decay constant of the room response (RT60 ≈ 0.8 s)
FAR_FIELD_SEED = 0
_AUDIO_KEYS = ("audio_features", "logmel", "speech_energy")


# ------------------------------------------------------------------------ the degraded inputs


def remove_faces(session: PreparedSession) -> PreparedSession:
    """Protocol (a): no face anywhere (faces zero, face_present 0); audio untouched."""
    arrays = dict(session.arrays)
    arrays["faces"] = np.zeros_like(session.arrays["faces"])
    arrays["face_present"] = np.zeros_like(session.arrays["face_present"])
    return PreparedSession(session.name, session.split, arrays)


def far_field(signal: np.ndarray, sample_rate: float, seed: int = FAR_FIELD_SEED) -> np.ndarray:
    """Protocol (c): x attenuated by 25 dB, 4th-order Butterworth low-pass, reverberated.

    The room response is white noise under an exp(-t / 0.12 s) envelope (0.5 s long, unit
    energy), mixed 30 % dry / 70 % wet; the result is scaled by 10^(-25/20).
    """
    from scipy import signal as sps

    x = np.asarray(signal, np.float64)
    sos = sps.butter(4, FAR_FIELD_CUTOFF_HZ, "lowpass", fs=sample_rate, output="sos")
    dry = sps.sosfilt(sos, x)
    tail = np.arange(int(0.5 * sample_rate)) / sample_rate
    response = np.random.default_rng(seed).standard_normal(tail.size)
    response *= np.exp(-tail / FAR_FIELD_DECAY_SECONDS)
    response /= np.sqrt(np.sum(response**2))
    wet = sps.fftconvolve(dry, response)[: dry.size]
    gain = 10.0 ** (-FAR_FIELD_ATTENUATION_DB / 20.0)
    return (gain * (0.3 * dry + 0.7 * wet)).astype(np.float32)


def with_audio(
    session: PreparedSession,
    signal: np.ndarray,
    config: ml_collections.ConfigDict,
    normalizer: Any,
    silent: bool = False,
) -> PreparedSession:
    """The session with its audio inputs recomputed from `signal` (16 kHz) by the audio front end.

    Features are z-normalised with the saved training statistics (Eq. 9); `silent` also sets
    speech_energy to 0 (protocol (b)).
    """
    from avemo.audio import frontend, normalize

    audio = frontend.extract(
        (signal, config.audio.sample_rate),
        session.num_steps,
        config.audio,
        step_seconds=config.data.step_seconds,
    )
    arrays = dict(session.arrays)
    arrays["audio_features"] = normalize.apply(
        audio["audio_features"], normalizer, audio["audio_feature_names"]
    )
    if "logmel" in arrays:
        arrays["logmel"] = audio["logmel"]
    speech = audio["speech_energy"].astype(np.float32)
    arrays["speech_energy"] = np.zeros_like(speech) if silent else speech
    return PreparedSession(session.name, session.split, arrays)


def session_signal(session: Any, config: ml_collections.ConfigDict) -> np.ndarray:
    """The raw audio of a corpus `Session` at the front end's rate (its wav, else the video's)."""
    from avemo.audio import frontend

    source = session.audio_path if session.audio_path is not None else session.video_path
    signal, _ = frontend.load_source(source, config.audio)
    return signal


def protocol_sessions(
    protocol: str,
    sessions: Sequence[PreparedSession],
    raw_sessions: Mapping[str, Any] | None,
    config: ml_collections.ConfigDict,
    normalizer: Any,
) -> list[PreparedSession] | None:
    """The inputs of `sessions` under a protocol; None where it needs recordings that are absent."""
    if protocol == "normal":
        return list(sessions)
    if protocol == "face_removed":
        return [remove_faces(s) for s in sessions]
    if raw_sessions is None:  # the in-memory corpus has no recordings to degrade
        return None
    out = []
    for s in sessions:
        signal = session_signal(raw_sessions[s.name], config)
        if protocol == "audio_silenced":
            out.append(with_audio(s, np.zeros_like(signal), config, normalizer, silent=True))
        elif protocol == "far_field":
            out.append(
                with_audio(s, far_field(signal, config.audio.sample_rate), config, normalizer)
            )
        else:
            raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    return out


def gate_modality_correlation(
    audio_gate: np.ndarray, speech_energy: np.ndarray, face_present: np.ndarray
) -> float:
    """Pearson correlation of β_t with m_t - n_t (Eq. 31's targets); NaN if either is constant."""
    beta = np.asarray(audio_gate, np.float64).ravel()
    availability = (
        np.asarray(speech_energy, np.float64) - np.asarray(face_present, np.float64)
    ).ravel()
    if np.ptp(beta) == 0 or np.ptp(availability) == 0:
        return float("nan")
    return float(np.corrcoef(beta, availability)[0, 1])


# -------------------------------------------------------------------------------- evaluation


@dataclasses.dataclass
class ProtocolResult:
    protocol: str
    rows: list[dict[str, Any]]  # per session and pooled, raw and post-processed
    pooled: dict[str, float]  # post-processed pooled metrics
    gate_mean: float
    gate_correlation: float


def _metric_row(
    protocol: str, stage: str, session: str, split: str, pred: np.ndarray, gold: np.ndarray
) -> dict[str, Any]:
    row: dict[str, Any] = {"protocol": protocol, "stage": stage, "session": session, "split": split}
    for d, dim in enumerate(DIMENSIONS):
        row[f"ccc_{dim}"] = metrics_lib.ccc(pred[:, d], gold[:, d])
        row[f"rmse_{dim}"] = metrics_lib.rmse(pred[:, d], gold[:, d])
        row[f"r2_{dim}"] = metrics_lib.r2(gold[:, d], pred[:, d])
    row["ccc_mean"] = float(np.mean([row[f"ccc_{dim}"] for dim in DIMENSIONS]))
    return row


def score(
    protocol: str,
    sessions: Sequence[PreparedSession],
    results: Mapping[str, Mapping[str, np.ndarray]],
    params: Mapping[str, Any] | None,
) -> ProtocolResult:
    """Metrics per session and pooled, before ("raw") and after ("postprocessed") post-processing.

    β correlation: pooled over the sessions' steps, with the protocol's own m and n.
    """
    rows = []
    pooled = {}
    for stage in ("raw", "postprocessed"):
        preds, golds = [], []
        for s in sessions:
            pred = results[s.name]["outputs"]
            if stage == "postprocessed":
                pred = postprocess.apply(pred, params)
            gold = np.asarray(s.arrays["labels"])
            rows.append(_metric_row(protocol, stage, s.name, s.split, pred, gold))
            preds.append(pred)
            golds.append(gold)
        row = _metric_row(
            protocol, stage, "pooled", "+".join(sorted({s.split for s in sessions})),
            np.concatenate(preds), np.concatenate(golds),
        )  # fmt: skip
        rows.append(row)
        if stage == "postprocessed":
            pooled = {k: v for k, v in row.items() if k.startswith(("ccc", "rmse", "r2"))}
    gate_mean = gate_corr = float("nan")
    if sessions and all("audio_gate" in results[s.name] for s in sessions):
        beta = np.concatenate([results[s.name]["audio_gate"] for s in sessions])
        speech = np.concatenate([s.arrays["speech_energy"] for s in sessions])
        faces = np.concatenate([s.arrays["face_present"] for s in sessions])
        gate_mean = float(beta.mean())
        gate_corr = gate_modality_correlation(beta, speech, faces)
    return ProtocolResult(protocol, rows, pooled, gate_mean, gate_corr)


def evaluate_workdir(
    workdir: str,
    splits: Sequence[str] = ("dev",),
    which: str = "best",
    protocols: Sequence[str] = PROTOCOLS,
    fit_postprocess: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Evaluates a trained workdir and writes `workdir/reports/`; returns the summary (JSON-able).

    Post-processing is fitted on the dev sessions' normal-input predictions (when `fit_postprocess`
    and dev labels exist; otherwise a saved `postprocess.json` is used) and applied to every
    protocol and split.
    """
    import jax

    from avemo import inference, train

    workdir = os.path.abspath(workdir)
    model = inference.load(workdir, which)
    config = model.config
    sessions = train.load_sessions(config, workdir)
    evaluated = [s for s in sessions if s.split in splits and s.has_labels]
    dev = [s for s in sessions if s.split == "dev" and s.has_labels]
    if not evaluated:
        raise ValueError(f"{workdir}: no labelled sessions in split(s) {tuple(splits)}")
    raw_sessions = None
    normalizer = None
    if config.data.corpus != "memory":
        from avemo.data.corpora import get_sessions

        raw_sessions = {s.name: s for s in get_sessions(config.data)}
        normalizer = model.normalizer()

    needed = {s.name: s for s in evaluated + dev}
    normal = model.predict(list(needed.values()))
    params = postprocess.load(workdir)
    if fit_postprocess and dev:
        train_labels = [s.arrays["labels"] for s in sessions if s.split == "train" and s.has_labels]
        params = postprocess.fit(
            {s.name: normal[s.name]["outputs"] for s in dev},
            {s.name: s.arrays["labels"] for s in dev},
            train_labels,
            config.postprocess,
        )
        params["checkpoint_step"] = model.step
        if jax.process_index() == 0:
            postprocess.save(workdir, params)

    results: dict[str, ProtocolResult] = {}
    inputs: dict[str, list[PreparedSession]] = {}
    for protocol in protocols:
        degraded = protocol_sessions(protocol, evaluated, raw_sessions, config, normalizer)
        if degraded is None:
            log.warning("Protocol %s skipped: the %s corpus has no recordings.", protocol, "memory")
            continue
        predictions = normal if protocol == "normal" else model.predict(degraded)
        results[protocol] = score(protocol, degraded, predictions, params)
        inputs[protocol] = degraded
    summary = _summary(workdir, model.step, splits, results, params)
    if jax.process_index() == 0:
        _write_reports(workdir, summary, results, params)
        if plots and "normal" in results:
            for s in inputs["normal"]:
                if s.split != "dev":
                    continue
                _write_plot(workdir, s, normal[s.name], params, config.data.step_seconds)
    return summary


def _summary(
    workdir: str,
    step: int,
    splits: Sequence[str],
    results: Mapping[str, ProtocolResult],
    params: Mapping[str, Any] | None,
) -> dict[str, Any]:
    normal = results.get("normal")
    robustness = {}
    for name, r in results.items():
        entry = dict(
            r.pooled, audio_gate_mean=r.gate_mean, gate_availability_corr=r.gate_correlation
        )
        if normal is not None:
            entry["ccc_mean_drop"] = normal.pooled["ccc_mean"] - r.pooled["ccc_mean"]
        robustness[name] = entry
    return {
        "workdir": workdir,
        "checkpoint_step": step,
        "splits": list(splits),
        "robustness": robustness,
        "postprocess": None if params is None else postprocess.summary_rows(params),
    }


# ----------------------------------------------------------------------------------- writing


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not np.isfinite(value) else f"{value:.3f}"
    return str(value)


def _markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


_METRIC_COLUMNS = [f"{m}_{d}" for m in ("ccc", "rmse", "r2") for d in DIMENSIONS] + ["ccc_mean"]


def _write_reports(
    workdir: str,
    summary: Mapping[str, Any],
    results: Mapping[str, ProtocolResult],
    params: Mapping[str, Any] | None,
) -> None:
    out = pathlib.Path(workdir) / REPORT_DIR
    all_rows = [row for r in results.values() for row in r.rows]
    columns = ["protocol", "stage", "session", "split", *_METRIC_COLUMNS]
    write_atomically(out / "metrics.csv", _csv_text(all_rows, columns))
    robust_rows = [{"protocol": name, **entry} for name, entry in summary["robustness"].items()]
    robust_columns = [
        "protocol", *_METRIC_COLUMNS, "ccc_mean_drop", "audio_gate_mean", "gate_availability_corr",
    ]  # fmt: skip
    write_atomically(out / "robustness.csv", _csv_text(robust_rows, robust_columns))
    text = [
        f"# Evaluation of {workdir}",
        "",
        f"Checkpoint step {summary['checkpoint_step']}; split(s) {', '.join(summary['splits'])}. "
        "Metrics: CCC (Eq. 35), RMSE (Eq. 37), R² (Eq. 34); *pooled* concatenates all sessions.",
        "",
    ]
    if "normal" in results:
        shown = [r for r in results["normal"].rows if r["stage"] == "postprocessed"]
        shown += [
            r for r in results["normal"].rows if r["stage"] == "raw" and r["session"] == "pooled"
        ]
        text += [
            "## Per session (normal inputs, post-processed; last row: pooled, raw)",
            "",
            _markdown_table(shown, ["session", "stage", *_METRIC_COLUMNS]),
            "",
        ]
    text += [
        "## Missing-modality protocol (pooled, post-processed)",
        "",
        "face_removed: faces zero, face_present 0. audio_silenced: audio front end on silence, "
        "speech_energy 0. far_field: own audio −25 dB, low-passed at 1.8 kHz, reverberated. "
        "gate corr = Pearson correlation of β with m − n (speech energy minus face flag).",
        "",
        _markdown_table(robust_rows, robust_columns),
        "",
    ]
    if params is not None:
        rows = postprocess.summary_rows(params)
        write_atomically(
            out / "postprocess.csv",
            _csv_text(rows, ["dimension", "step", "applied", "ccc_before", "ccc_after",
                             "ccc_if_applied", "parameters"]),
        )  # fmt: skip
        text += [
            f"## Post-processing (fitted on dev: {', '.join(params['fitted_on'])})",
            "",
            "Dev CCC (pooled) before and after each step; a step that would lower it is skipped.",
            "",
            _markdown_table(
                rows,
                [
                    "dimension",
                    "step",
                    "applied",
                    "ccc_before",
                    "ccc_after",
                    "ccc_if_applied",
                    "parameters",
                ],
            ),  # fmt: skip
            "",
        ]
    write_atomically(out / "report.md", "\n".join(text))
    write_atomically(out / "summary.json", json.dumps(summary, indent=2, default=_json_float))


def _json_float(value: Any) -> Any:
    if isinstance(value, np.floating | np.integer):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_plot(
    workdir: str,
    session: PreparedSession,
    result: Mapping[str, np.ndarray],
    params: Mapping[str, Any] | None,
    step_seconds: float,
) -> None:
    times = np.arange(session.num_steps) * step_seconds
    png = curves_png(
        f"{session.name}: prediction (post-processed) vs gold standard",
        times,
        postprocess.apply(result["outputs"], params),
        result.get("audio_gate"),
        np.asarray(session.arrays["face_present"]),
        np.asarray(session.arrays["speech_energy"]),
        gold=np.asarray(session.arrays["labels"]),
    )
    write_atomically(pathlib.Path(workdir) / REPORT_DIR / "plots" / f"{session.name}.png", png)


def report_after_training(config: ml_collections.ConfigDict, workdir: str) -> None:
    """The training hook (`config.eval.report_at_end`): reports of the best checkpoint."""
    if not config.eval.report_at_end:
        return
    if not config.checkpoint.enabled:
        log.info("No reports: checkpointing is disabled, so there is no model to reload.")
        return
    summary = evaluate_workdir(workdir, splits=tuple(config.eval.splits))
    log.info(
        "Reports written to %s (dev CCC pooled, post-processed: %.3f).",
        os.path.join(workdir, REPORT_DIR),
        summary["robustness"].get("normal", {}).get("ccc_mean", float("nan")),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avemo.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workdir", required=True, help="a trained avemo workdir")
    parser.add_argument("--splits", nargs="+", default=["dev"], help="splits to report (labelled)")
    parser.add_argument("--which", choices=("best", "latest"), default="best")
    parser.add_argument(
        "--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS),
        help="input conditions to evaluate",
    )  # fmt: skip
    parser.add_argument(
        "--keep-postprocess", action="store_true",
        help="apply the saved postprocess.json instead of fitting it again on dev",
    )  # fmt: skip
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from avemo.inference import NoModelError

    try:
        summary = evaluate_workdir(
            args.workdir,
            splits=tuple(args.splits),
            which=args.which,
            protocols=tuple(args.protocols),
            fit_postprocess=not args.keep_postprocess,
            plots=not args.no_plots,
        )
    except (NoModelError, ValueError, OSError) as err:
        print(f"avemo.evaluate: error: {err}", file=sys.stderr)
        return 1
    report = pathlib.Path(summary["workdir"]) / REPORT_DIR / "report.md"
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
