"""Evaluation reports of a workdir: tables, plots, missing-modality protocol, post-processing.

trained workdir -> predictions on whole sessions (normal inputs and three degraded ones) ->
post-processing fitted on dev (`avemo.postprocess`, saved as `workdir/postprocess.json`) ->
CCC / RMSE / R² per session and pooled (Eq. 34-37), β-vs-modality correlation ->
`workdir/reports/` (Markdown, CSV, JSON, PNG).

Run: python -m avemo.evaluate --workdir W [--split dev|test] [--which best|latest]

Held-out figures: the checkpoint ("best") and the post-processing are chosen on dev only. Dev
figures are cross-fitted (each dev session post-processed with the fit on the other dev sessions);
`--split test` scores the test sessions once, with the gold standard the embedded corpus keeps
apart (`hidden_test_labels/`, read only here) or `--test-labels DIR`.

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from avemo import metrics as metrics_lib
from avemo import postprocess
from avemo.data.pipeline import PreparedSession
from avemo.metrics import DIMENSIONS
from avemo.reporting.figures import write_atomically, write_curves_png

log = logging.getLogger("avemo")

REPORT_DIR = "reports"
PROTOCOLS = ("normal", "face_removed", "audio_silenced", "far_field")
# Far-field speech: a quiet, distant talker in a reverberant room.
FAR_FIELD_ATTENUATION_DB = 25.0
FAR_FIELD_CUTOFF_HZ = 1800.0
FAR_FIELD_DECAY_SECONDS = 0.12  # amplitude decay constant of the room response (RT60 ≈ 0.8 s)
FAR_FIELD_SEED = 0
# The inputs `with_audio` recomputes from a signal (training's far-field augmentation swaps them).
AUDIO_KEYS = ("audio_features", "logmel", "speech_energy")
_AUDIO_PROTOCOLS = ("audio_silenced", "far_field")  # the audio front end on degraded audio


# ------------------------------------------------------------------------ the degraded inputs


def remove_faces(session: PreparedSession) -> PreparedSession:
    """Protocol (a): no face anywhere (faces zero, face_present 0); audio untouched.

    The same transform as training's modality dropout (`avemo.data.augment.remove_face`).
    """
    from avemo.data import augment

    return PreparedSession(session.name, session.split, augment.remove_face(session.arrays))


def far_field(
    signal: np.ndarray,
    sample_rate: float,
    seed: int = FAR_FIELD_SEED,
    attenuation_db: float = FAR_FIELD_ATTENUATION_DB,
    cutoff_hz: float = FAR_FIELD_CUTOFF_HZ,
    decay_seconds: float = FAR_FIELD_DECAY_SECONDS,
) -> np.ndarray:
    """Protocol (c): x attenuated by 25 dB, 4th-order Butterworth low-pass, reverberated.

    The room response is white noise under an exp(-t / 0.12 s) envelope (0.5 s long, unit
    energy), mixed 30 % dry / 70 % wet; the result is scaled by 10^(-25/20). The keyword
    arguments give other rooms and distances (training's far-field augmentation draws them,
    `avemo.data.augment.far_field_params`); the protocol uses the defaults.
    """
    from scipy import signal as sps

    x = np.asarray(signal, np.float64)
    sos = sps.butter(4, cutoff_hz, "lowpass", fs=sample_rate, output="sos")
    dry = sps.sosfilt(sos, x)
    tail = np.arange(int(0.5 * sample_rate)) / sample_rate
    response = np.random.default_rng(seed).standard_normal(tail.size)
    response *= np.exp(-tail / decay_seconds)
    response /= np.sqrt(np.sum(response**2))
    wet = sps.fftconvolve(dry, response)[: dry.size]
    gain = 10.0 ** (-attenuation_db / 20.0)
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


def protocol_session(
    protocol: str,
    session: PreparedSession,
    raw_session: Any,
    config: ml_collections.ConfigDict,
    normalizer: Any,
) -> PreparedSession:
    """One session's inputs under a protocol (`raw_session`: its recording, for the audio ones)."""
    if protocol == "normal":
        return session
    if protocol == "face_removed":
        return remove_faces(session)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    signal = session_signal(raw_session, config)
    if protocol == "audio_silenced":
        return with_audio(session, np.zeros_like(signal), config, normalizer, silent=True)
    return with_audio(session, far_field(signal, config.audio.sample_rate), config, normalizer)


def protocol_sessions(
    protocol: str,
    sessions: Sequence[PreparedSession],
    raw_sessions: Mapping[str, Any] | None,
    config: ml_collections.ConfigDict,
    normalizer: Any,
) -> list[PreparedSession] | None:
    """The inputs of `sessions` under a protocol; None where it needs recordings that are absent."""
    if protocol in _AUDIO_PROTOCOLS and raw_sessions is None:
        return None  # the in-memory corpus has no recordings to degrade
    return [
        protocol_session(
            protocol, s, None if raw_sessions is None else raw_sessions[s.name], config, normalizer
        )
        for s in sessions
    ]


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
    rows: list[dict[str, Any]]  # per session and pooled, for each stage
    pooled: dict[str, dict[str, float]]  # stage -> pooled metrics
    gate_mean: float
    gate_correlation: float


# Stages of a prediction: "raw" model outputs; "postprocessed", the reported figures (test: the
# fit on all dev sessions; dev: cross-fitted, each session with the fit on the other dev sessions,
# or in-sample when there is only one dev session); "in_sample" (dev only, when cross-fitted too):
# the fit on all dev sessions scored on those same sessions -- best-by-dev, optimistic.
STAGES = ("raw", "postprocessed", "in_sample")


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


def stage_parameters(
    evaluated: Sequence[PreparedSession],
    params: Mapping[str, Any] | None,
    folds: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """{stage: {session: post-processing parameters or None}} of the reported stages: "raw";
    "postprocessed" (each session's fold when `folds` are given -- dev, cross-fitted -- else
    `params`; absent without `params`); "in_sample" (`params`, only beside folds)."""
    names = [s.name for s in evaluated]
    stages: dict[str, dict[str, Any]] = {"raw": dict.fromkeys(names)}
    if params is not None:
        stages["postprocessed"] = (
            {n: folds[n] for n in names} if folds is not None else dict.fromkeys(names, params)
        )
        if folds is not None:
            stages["in_sample"] = dict.fromkeys(names, params)
    return stages


def _face(result: Mapping[str, np.ndarray], session: PreparedSession) -> postprocess.Face | None:
    """The face stream of `session`'s model result, with the n of the input it was run on."""
    return postprocess.face_of(result, session.arrays["face_present"])


def _voice(result: Mapping[str, np.ndarray], session: PreparedSession) -> postprocess.Stream | None:
    """The voice stream of `session`'s model result, with the m of the input it was run on."""
    return postprocess.voice_of(result, session.arrays["speech_energy"])


def score(
    protocol: str,
    sessions: Sequence[PreparedSession],
    results: Mapping[str, Mapping[str, np.ndarray]],
    stage_params: Mapping[str, Mapping[str, Mapping[str, Any] | None]],
) -> ProtocolResult:
    """Metrics per session and pooled, for each stage.

    Args:
      stage_params: {stage: {session: post-processing parameters, or None for raw outputs}}.

    β correlation: pooled over the sessions' steps, with the protocol's own m and n.
    """
    rows = []
    pooled = {}
    for stage, per_session in stage_params.items():
        preds, golds = [], []
        for s in sessions:
            pred = postprocess.apply(
                results[s.name]["outputs"],
                per_session[s.name],
                _face(results[s.name], s),
                _voice(results[s.name], s),
            )
            gold = np.asarray(s.arrays["labels"])
            rows.append(_metric_row(protocol, stage, s.name, s.split, pred, gold))
            preds.append(pred)
            golds.append(gold)
        row = _metric_row(
            protocol, stage, "pooled", "+".join(sorted({s.split for s in sessions})),
            np.concatenate(preds), np.concatenate(golds),
        )  # fmt: skip
        rows.append(row)
        pooled[stage] = {k: v for k, v in row.items() if k.startswith(("ccc", "rmse", "r2"))}
    gate_mean = gate_corr = float("nan")
    if sessions and all("audio_gate" in results[s.name] for s in sessions):
        beta = np.concatenate([results[s.name]["audio_gate"] for s in sessions])
        speech = np.concatenate([s.arrays["speech_energy"] for s in sessions])
        faces = np.concatenate([s.arrays["face_present"] for s in sessions])
        gate_mean = float(beta.mean())
        gate_corr = gate_modality_correlation(beta, speech, faces)
    return ProtocolResult(protocol, rows, pooled, gate_mean, gate_corr)


def with_labels(session: PreparedSession, values: np.ndarray) -> PreparedSession:
    """The session with a gold standard [T', 2] attached, both cut to their common length.

    A recording's own grid and its label file may differ by a step at the end (frames vs label
    rows); more than that is warned about.
    """
    values = np.asarray(values, np.float32)
    n = min(session.num_steps, values.shape[0])
    if abs(session.num_steps - values.shape[0]) > 1:
        log.warning(
            "%s: %d label steps for %d feature steps; scoring the first %d",
            session.name, values.shape[0], session.num_steps, n,
        )  # fmt: skip
    arrays = {
        k: (v[:n] if k != "logmel" and np.ndim(v) and v.shape[0] == session.num_steps else v)
        for k, v in session.arrays.items()
    }
    arrays["labels"] = values[:n]
    return PreparedSession(session.name, session.split, arrays)


def corpus_root(config: ml_collections.ConfigDict) -> pathlib.Path | None:
    """The root folder of the corpus files (None for the in-memory corpus)."""
    if config.data.corpus == "memory":
        return None
    if config.data.corpus == "synthetic":
        from avemo.data.corpora import synthetic_root

        return synthetic_root(config.data)
    return pathlib.Path(config.data.root).expanduser()


def test_sessions(
    sessions: Sequence[PreparedSession],
    config: ml_collections.ConfigDict,
    labels_dir: str | os.PathLike | None = None,
) -> list[PreparedSession]:
    """The test sessions with their gold standard, for scoring only.

    Labels come from the session itself (a folder corpus with labelled test sessions), else from
    `labels_dir` ({arousal,valence}/<session>.arff, the AVEC layout), else from the corpus root's
    hidden test gold standard (`synthetic.HIDDEN_DIR`, written by the embedded corpus).

    Raises:
      ValueError: when no test session has labels anywhere.
    """
    from avemo.data.corpora import arff_io, synthetic

    root = corpus_root(config)
    folder = pathlib.Path(labels_dir) if labels_dir else None
    if folder is None and root is not None:
        folder = root / synthetic.HIDDEN_DIR
    out = []
    for s in sessions:
        if s.split != "test":
            continue
        if s.has_labels:
            out.append(s)
            continue
        if folder is None:
            continue
        paths = [folder / dim / f"{s.name}.arff" for dim in DIMENSIONS]
        if all(p.is_file() for p in paths):
            labels = arff_io.read_label_pair(*paths, step_seconds=config.data.step_seconds)
            out.append(with_labels(s, labels.values))
    if not out:
        raise ValueError(
            f"no labelled test sessions: none has labels and {folder} holds no "
            "{arousal,valence}/<session>.arff (give --test-labels DIR)"
        )
    return out


def _default_step(workdir: str, config: ml_collections.ConfigDict) -> int | None:
    """The checkpoint `predict` uses by default: the best by dev, else the latest."""
    from avemo import checkpointing, train

    ckpt = checkpointing.Checkpointer(
        workdir, f"{train.SELECTION_SPLIT}/{config.checkpoint.best_metric}"
    )
    try:
        best = ckpt.best_step()
        return best if best is not None else ckpt.latest_step()
    finally:
        ckpt.close()


class EvalInputs:
    """What the evaluations of workdirs with one data config share: the prepared sessions, the
    recordings and the degraded inputs of the missing-modality protocol (each made once).

    A population's members (`report_population`) share one; a single evaluation makes its own.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        from avemo import train

        self.config = config
        self.sessions = train.load_sessions(config, workdir)
        self.raw_sessions = None
        self.normalizer = None
        if config.data.corpus != "memory":
            from avemo.audio import normalize
            from avemo.data.corpora import get_sessions
            from avemo.data.prepare import NORMALIZER_FILE

            self.raw_sessions = {s.name: s for s in get_sessions(config.data)}
            self.normalizer = normalize.load(os.path.join(workdir, NORMALIZER_FILE))
        self._degraded: dict[tuple[str, str, int], PreparedSession] = {}
        self._test: dict[str | None, list[PreparedSession]] = {}

    def test_sessions(self, labels_dir: str | os.PathLike | None = None) -> list[PreparedSession]:
        """`test_sessions` of these sessions, the gold standard read once per labels folder."""
        key = None if labels_dir is None else str(labels_dir)
        if key not in self._test:
            self._test[key] = test_sessions(self.sessions, self.config, labels_dir)
        return self._test[key]

    def prepare(
        self, protocols: Sequence[str], sessions: Sequence[PreparedSession], threads: int
    ) -> None:
        """Makes the degraded audio inputs of `sessions` ahead, `threads` front-end runs at once
        (openSMILE runs outside the GIL); `protocol` then finds them made."""
        if self.raw_sessions is None:
            return
        todo = [
            (p, s)
            for p in protocols
            if p in _AUDIO_PROTOCOLS
            for s in sessions
            if (p, s.name, s.num_steps) not in self._degraded
        ]
        if threads <= 1 or len(todo) <= 1:
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(threads, len(todo))) as pool:
            made = pool.map(
                lambda ps: protocol_session(
                    ps[0], ps[1], self.raw_sessions[ps[1].name], self.config, self.normalizer
                ),
                todo,
            )
            for (p, s), degraded in zip(todo, made, strict=True):
                self._degraded[(p, s.name, s.num_steps)] = degraded

    def protocol(
        self, protocol: str, sessions: Sequence[PreparedSession]
    ) -> list[PreparedSession] | None:
        """`protocol_sessions` of these sessions; each degraded session is made once."""
        if protocol in _AUDIO_PROTOCOLS and self.raw_sessions is None:
            return None
        out = []
        for s in sessions:
            key = (protocol, s.name, s.num_steps)
            if key not in self._degraded:
                raw = None if self.raw_sessions is None else self.raw_sessions[s.name]
                self._degraded[key] = protocol_session(
                    protocol, s, raw, self.config, self.normalizer
                )
            out.append(self._degraded[key])
        return out


Predict = Callable[[str, Sequence[PreparedSession]], dict[str, dict]]


def evaluate_workdir(
    workdir: str,
    split: str = "dev",
    which: str = "best",
    protocols: Sequence[str] = PROTOCOLS,
    fit_postprocess: bool = True,
    plots: bool = True,
    test_labels: str | os.PathLike | None = None,
    *,
    trained: tuple[ml_collections.ConfigDict, int, Predict] | None = None,
    inputs: EvalInputs | None = None,
    plot_writer: PlotWriter | None = None,
) -> dict[str, Any]:
    """Evaluates a trained workdir on one split; writes `workdir/reports/` (test: reports/test/).

    The checkpoint ("best" = chosen on dev during training) and the post-processing are chosen on
    dev only. Post-processing is fitted on the dev sessions' normal-input predictions (when
    `fit_postprocess` and dev labels exist; otherwise the saved `postprocess.json` of this very
    checkpoint is used) and saved only for the checkpoint `predict` uses by default, so evaluating
    `--which latest` never replaces the best checkpoint's fit. Dev figures are cross-fitted
    (leave-one-dev-session-out); test figures use the fit on all dev sessions, and the test
    labels are read here and nowhere else.

    Args:
      trained: (config, checkpoint step, predict(key, sessions)) of the model, already loaded
        (a population member); default: `avemo.inference.load(workdir, which)`.
      inputs: the sessions and degraded inputs, shared with other evaluations of the same data.
      plot_writer: draws and writes a plot (default: here and now; a population: a pool).

    Returns:
      The summary (JSON-able); its "robustness" holds the post-processed pooled figures.
    """
    import jax

    from avemo import train

    if split not in ("dev", "test"):
        raise ValueError(f"split {split!r}: choose 'dev' or 'test'")
    workdir = os.path.abspath(workdir)
    if trained is None:
        from avemo import inference

        model = inference.load(workdir, which)
        trained = (model.config, model.step, lambda _key, sessions: model.predict(sessions))
    config, step, predict = trained
    if inputs is None:
        inputs = EvalInputs(config, workdir)
    sessions = inputs.sessions
    dev = [s for s in sessions if s.split == train.SELECTION_SPLIT and s.has_labels]
    if split == "dev":
        evaluated = dev
        if not evaluated:
            raise ValueError(f"{workdir}: no labelled dev sessions to evaluate")
    else:
        evaluated = inputs.test_sessions(test_labels)

    fitting = fit_postprocess and bool(dev)
    needed = {s.name: s for s in evaluated + (dev if fitting else [])}
    normal = predict("normal", list(needed.values()))
    folds = None
    if fitting:
        params = postprocess.fit(
            {s.name: normal[s.name]["outputs"] for s in dev},
            {s.name: s.arrays["labels"] for s in dev},
            [s.arrays["labels"] for s in sessions if s.split == "train" and s.has_labels],
            config.postprocess,
            {s.name: _face(normal[s.name], s) for s in dev},
            {s.name: _voice(normal[s.name], s) for s in dev},
        )
        params["checkpoint_step"] = step
        default_step = _default_step(workdir, config)
        if step != default_step:
            log.info(
                "postprocess.json not written: step %d is not the checkpoint predict uses "
                "(step %s), whose fit it keeps.", step, default_step,
            )  # fmt: skip
        elif jax.process_index() == 0:
            postprocess.save(workdir, params)
    else:
        params = postprocess.load(workdir, step)  # StaleError if another checkpoint's
    if split == "dev" and len(dev) >= 2 and params is not None:
        folds = postprocess.cross_fit(
            {s.name: normal[s.name]["outputs"] for s in dev},
            {s.name: s.arrays["labels"] for s in dev},
            [s.arrays["labels"] for s in sessions if s.split == "train" and s.has_labels],
            config.postprocess,
            {s.name: _face(normal[s.name], s) for s in dev},
            {s.name: _voice(normal[s.name], s) for s in dev},
        )
    if split == "test" or params is None:
        folds = None
        fit_note = "fitted on all dev sessions" if params is not None else "none fitted"
    elif folds is not None:
        fit_note = "cross-fitted: each dev session with the fit on the other dev sessions"
    else:
        fit_note = "IN-SAMPLE (fitted and scored on the only dev session; optimistic)"
    stage_params = stage_parameters(evaluated, params, folds)

    results: dict[str, ProtocolResult] = {}
    shown: dict[str, list[PreparedSession]] = {}
    for protocol in protocols:
        degraded = inputs.protocol(protocol, evaluated)
        if degraded is None:
            log.warning("Protocol %s skipped: the %s corpus has no recordings.", protocol, "memory")
            continue
        predictions = normal if protocol == "normal" else predict(protocol, degraded)
        results[protocol] = score(protocol, degraded, predictions, stage_params)
        shown[protocol] = degraded
    summary = build_summary(workdir, step, which, split, results, params, fit_note)
    out = report_dir(workdir, split)
    if jax.process_index() == 0:
        write_reports(out, summary, results, params)
        if plots and "normal" in results:
            for s in shown["normal"]:
                _write_plot(
                    out, s, normal[s.name], stage_params, config.data.step_seconds, plot_writer
                )
    return summary


def report_dir(workdir: str, split: str) -> pathlib.Path:
    """Where a split's reports go: workdir/reports (dev), workdir/reports/test (test)."""
    base = pathlib.Path(workdir) / REPORT_DIR
    return base if split == "dev" else base / split


def build_summary(
    workdir: str,
    step: int | str,
    which: str,
    split: str,
    results: Mapping[str, ProtocolResult],
    params: Mapping[str, Any] | None,
    fit_note: str,
) -> dict[str, Any]:
    normal = results.get("normal")
    robustness = {}
    for name, r in results.items():
        headline = "postprocessed" if "postprocessed" in r.pooled else "raw"
        entry = dict(r.pooled[headline])
        for stage, values in r.pooled.items():
            if stage != headline:
                entry.update({f"{stage}_{k}": v for k, v in values.items()})
        entry.update(audio_gate_mean=r.gate_mean, gate_availability_corr=r.gate_correlation)
        if normal is not None:
            entry["ccc_mean_drop"] = normal.pooled[headline]["ccc_mean"] - entry["ccc_mean"]
        robustness[name] = entry
    return {
        "workdir": workdir,
        "split": split,
        "splits": [split],
        "checkpoint_step": step,
        "checkpoint": which,
        "checkpoint_chosen_on": "dev" if which == "best" else "none (latest)",
        "postprocess_fit": fit_note,
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


def write_reports(
    out: pathlib.Path,
    summary: Mapping[str, Any],
    results: Mapping[str, ProtocolResult],
    params: Mapping[str, Any] | None,
) -> None:
    all_rows = [row for r in results.values() for row in r.rows]
    columns = ["protocol", "stage", "session", "split", *_METRIC_COLUMNS]
    write_atomically(out / "metrics.csv", _csv_text(all_rows, columns))
    robust_rows = [{"protocol": name, **entry} for name, entry in summary["robustness"].items()]
    robust_columns = [
        "protocol", *_METRIC_COLUMNS, "ccc_mean_drop", "audio_gate_mean", "gate_availability_corr",
    ]  # fmt: skip
    write_atomically(out / "robustness.csv", _csv_text(robust_rows, robust_columns))
    text = [
        f"# Evaluation of {summary['workdir']} on the {summary['split']} split",
        "",
        f"Split **{summary['split']}**; checkpoint step {summary['checkpoint_step']} "
        f"({summary['checkpoint']}, chosen on {summary['checkpoint_chosen_on']}); "
        f"post-processing {summary['postprocess_fit']}. "
        "Metrics: CCC (Eq. 35), RMSE (Eq. 37), R² (Eq. 34); *pooled* concatenates all sessions. "
        "Stages: raw = model outputs; postprocessed = the reported figures; in_sample = "
        "post-processing fitted and scored on the same dev sessions (best-by-dev, optimistic).",
        "",
    ]
    if "normal" in results:
        shown = [r for r in results["normal"].rows if r["stage"] == "postprocessed"]
        shown += [
            r
            for r in results["normal"].rows
            if r["stage"] != "postprocessed" and r["session"] == "pooled"
        ]
        text += [
            "## Per session (normal inputs, post-processed; then pooled rows of the other stages)",
            "",
            _markdown_table(shown, ["session", "stage", *_METRIC_COLUMNS]),
            "",
        ]
    text += [
        f"## Missing-modality protocol ({summary['split']}, pooled, post-processed)",
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
            f"## Post-processing (fitted on dev: {', '.join(params['fitted_on'])}; "
            f"checkpoint step {params.get('checkpoint_step')})",
            "",
            "Dev CCC (pooled, in-sample: the sessions it is fitted on) before and after each "
            "step; a step that would lower it is skipped.",
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
    write_atomically(out / "summary.json", json.dumps(summary, indent=2, default=json_float))


def json_float(value: Any) -> Any:
    if isinstance(value, np.floating | np.integer):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


PlotWriter = Callable[..., None]  # (path, *curves_png args, **kwargs)


def _write_plot(
    out: pathlib.Path,
    session: PreparedSession,
    result: Mapping[str, np.ndarray],
    stage_params: Mapping[str, Mapping[str, Any]],
    step_seconds: float,
    writer: PlotWriter | None = None,
) -> None:
    times = np.arange(session.num_steps) * step_seconds
    stage = "postprocessed" if "postprocessed" in stage_params else "raw"
    (writer or write_curves_png)(
        out / "plots" / f"{session.name}.png",
        f"{session.name} ({session.split}): prediction ({stage}) vs gold standard",
        times,
        postprocess.apply(
            result["outputs"],
            stage_params[stage][session.name],
            _face(result, session),
            _voice(result, session),
        ),
        result.get("audio_gate"),
        np.asarray(session.arrays["face_present"]),
        np.asarray(session.arrays["speech_energy"]),
        gold=np.asarray(session.arrays["labels"]),
    )


class _PlotPool:
    """Plots drawn by worker processes while the caller goes on (a population's reports draw one
    figure per session and member; matplotlib holds the GIL, so threads would not overlap)."""

    def __init__(self, workers: int):
        import concurrent.futures
        import multiprocessing

        self._pool = concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),  # JAX is running: no fork
        )
        self._futures: list[Any] = []

    def __call__(self, path: pathlib.Path, *args: Any, **kwargs: Any) -> None:
        self._futures.append(self._pool.submit(write_curves_png, path, *args, **kwargs))

    def close(self) -> None:
        """Waits for every plot; the first failure is raised."""
        try:
            for future in self._futures:
                future.result()
        finally:
            self._pool.shutdown(cancel_futures=True)


def report_after_training(config: ml_collections.ConfigDict, workdir: str) -> None:
    """The training hook (`config.eval.report_at_end`): dev reports of the best checkpoint, then
    (`config.eval.report_test`) the test split scored once with it."""
    if not config.eval.report_at_end:
        return
    if not config.checkpoint.enabled:
        log.info("No reports: checkpointing is disabled, so there is no model to reload.")
        return
    _reports(config, workdir, None, None)


def report_population(
    configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str]
) -> None:
    """`report_after_training` for each member of a population, the members evaluated together.

    Each member's reports are those of `report_after_training` on its workdir (its own best
    checkpoint, post-processing fitted on its own dev predictions). What they share is computed
    once: the sessions, the degraded inputs of the missing-modality protocol (each an audio
    front-end run), and the predictions, which one program makes for all members over the member
    axis (`avemo.population.MemberPredictions`; a shared frozen face branch runs once).
    """
    from avemo import population, train

    chosen = [
        (c, w)
        for c, w in zip(configs, workdirs, strict=True)
        if c.eval.report_at_end and c.checkpoint.enabled
    ]
    if not chosen:
        return
    members = [w for _, w in chosen]
    try:
        trainer, state, loaded, steps = population.restore_members(members)
    except population.PopulationError as err:  # saved models that do not stack: one by one
        log.warning("Members evaluated one by one (%s).", err)
        for config, workdir in chosen:
            _reports(config, workdir, None, None)
        return
    predictions = population.MemberPredictions(trainer, state)
    inputs = EvalInputs(loaded[0], members[0])
    evaluated = [s for s in inputs.sessions if s.split == train.SELECTION_SPLIT and s.has_labels]
    if any(c.eval.report_test for c, _ in chosen):
        try:
            evaluated += inputs.test_sessions()
        except ValueError:
            pass  # said per member below
    inputs.prepare(PROTOCOLS, evaluated, threads=os.cpu_count() or 1)
    plots = _PlotPool(min(2, os.cpu_count() or 1))
    try:
        for m, (config, workdir) in enumerate(chosen):
            trained = (loaded[m], steps[m], predictions.for_member(m))
            _reports(config, workdir, trained, inputs, plots)
    finally:
        plots.close()


def _reports(
    config: ml_collections.ConfigDict,
    workdir: str,
    trained: tuple[ml_collections.ConfigDict, int, Predict] | None,
    inputs: EvalInputs | None,
    plots: PlotWriter | None = None,
) -> None:
    if trained is None:  # one loaded model and one set of inputs for the dev and test reports
        from avemo import inference

        model = inference.load(workdir, "best")
        trained = (model.config, model.step, lambda _key, sessions: model.predict(sessions))
        inputs = inputs or EvalInputs(model.config, workdir)
    try:
        summary = evaluate_workdir(
            workdir, split="dev", trained=trained, inputs=inputs, plot_writer=plots
        )
    except ValueError as err:
        log.warning("No dev reports: %s", err)
    else:
        log.info(
            "Reports written to %s (dev CCC pooled, post-processed %s: %.3f).",
            report_dir(workdir, "dev"),
            summary["postprocess_fit"].split(":")[0],
            summary["robustness"].get("normal", {}).get("ccc_mean", float("nan")),
        )
    if config.eval.report_test:
        try:
            summary = evaluate_workdir(
                workdir,
                split="test",
                fit_postprocess=False,
                trained=trained,
                inputs=inputs,
                plot_writer=plots,
            )
        except ValueError as err:
            log.warning("No test reports: %s", err)
            return
        normal = summary["robustness"].get("normal", {})
        log.info(
            "Test split (best-by-dev checkpoint, post-processing fitted on dev): CCC arousal "
            "%.3f, valence %.3f; reports in %s.",
            normal.get("ccc_arousal", float("nan")),
            normal.get("ccc_valence", float("nan")),
            report_dir(workdir, "test"),
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avemo.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workdir", required=True, help="a trained avemo workdir")
    parser.add_argument(
        "--split", choices=("dev", "test"), default="dev",
        help="dev (cross-fitted post-processing) or test (scored once; checkpoint and "
        "post-processing chosen on dev)",
    )  # fmt: skip
    parser.add_argument(
        "--test-labels", help="folder {arousal,valence}/<session>.arff of the test gold standard "
        "(default: the corpus's hidden test labels)",
    )  # fmt: skip
    parser.add_argument("--which", choices=("best", "latest"), default="best")
    parser.add_argument(
        "--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS),
        help="input conditions to evaluate",
    )  # fmt: skip
    parser.add_argument(
        "--keep-postprocess", action="store_true",
        help="apply the saved postprocess.json (of this checkpoint) instead of fitting it on dev",
    )  # fmt: skip
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from avemo.inference import NoModelError

    try:
        summary = evaluate_workdir(
            args.workdir,
            split=args.split,
            which=args.which,
            protocols=tuple(args.protocols),
            fit_postprocess=not args.keep_postprocess,
            plots=not args.no_plots,
            test_labels=args.test_labels,
        )
    except (NoModelError, ValueError, OSError) as err:
        print(f"avemo.evaluate: error: {err}", file=sys.stderr)
        return 1
    print((report_dir(summary["workdir"], args.split) / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
