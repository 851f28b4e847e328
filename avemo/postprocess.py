"""AVEC-style post-processing of predictions: face weight, delay, smoothing, bias, scale, median,
fitted on dev only.

model outputs [T, 2] -> the face head's weight where a face is in view (`face_weight`, off by
default; models with modality heads) -> the voice head's weight where the voice is heard
(`voice_weight`, likewise) -> label-delay compensation -> a moving average whose
window is fitted on dev (`smooth`) -> bias correction -> scaling to the training label spread ->
median smoothing -> reports / predict. `fit` chooses the
parameters on dev predictions (pooled CCC, Eq. 35) and keeps a step only where it does not lower
dev CCC on sessions it was not fitted on (`postprocess.keep_rule`); the result is saved with
the model (`workdir/postprocess.json`, stamped with the checkpoint step it was fitted on, which
`load` checks) and `apply` replays it identically in `avemo.evaluate` and `avemo.predict`.

Fitting and scoring on the same dev sessions is optimistic (the delay search, the bias and the
"keep a step if it helps" rule all see the scored labels). `cross_fit` gives honest dev figures:
each dev session is post-processed with parameters fitted on the other dev sessions only
(leave-one-session-out); held-out test sessions use the fit on all dev sessions.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from scipy import ndimage

from avemo.metrics import DIMENSIONS, ccc

log = logging.getLogger(__name__)

FILE = "postprocess.json"
STEPS = ("face_weight", "voice_weight", "delay", "smooth", "bias", "scale", "median")
# The steps that move the output toward one of the model's own heads, and which stream each reads.
HEAD_STEPS = {"face_weight": "face", "voice_weight": "voice"}
VERSION = 1
# The weights `face_weight` and `voice_weight` search (0 = the model's output unchanged, 1 = the
# head's where its stream is fully present).
FACE_WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))

# One session's stream of one modality, for `face_weight` / `voice_weight`: (that modality's
# head's outputs [T, 2], its presence [T] as the model saw it: the face-present flag n, the speech
# energy m).
Stream = tuple[np.ndarray, np.ndarray]
Face = Stream


def face_of(result: Mapping[str, np.ndarray], face_present: np.ndarray) -> Face | None:
    """The face stream of one session's model `result` (its `video_outputs`, the face head of a
    model with modality heads) with the session's n, or None for a model without a face head."""
    if "video_outputs" not in result:
        return None
    return np.asarray(result["video_outputs"], np.float64), np.asarray(face_present, np.float64)


def voice_of(result: Mapping[str, np.ndarray], speech_energy: np.ndarray) -> Stream | None:
    """The voice stream of one session's model `result` (its `audio_outputs`, the voice head of a
    model with modality heads) with the session's speech energy m (clipped to [0, 1]), or None for
    a model without a voice head."""
    if "audio_outputs" not in result:
        return None
    m = np.clip(np.asarray(speech_energy, np.float64), 0.0, 1.0)
    return np.asarray(result["audio_outputs"], np.float64), m


def toward_head(values: np.ndarray, head: np.ndarray, present: np.ndarray, w: float) -> np.ndarray:
    """y + w a (h - y): the output moved by weight w toward one of the model's own heads h where
    its stream is present (a = 1) and left alone where it is absent (a = 0). `face_weight`: the
    face head and the face-present flag n; `voice_weight`: the voice head and the speech energy
    m."""
    a = np.asarray(present, np.float64)
    return values + w * a * (np.asarray(head, np.float64) - values)


def shift(values: np.ndarray, steps: int) -> np.ndarray:
    """y[t] = x[t - steps] along axis 0, the edges held at the first/last value.

    Positive `steps` delays the predictions (they then match labels that lag the signals, i.e.
    the raters' reaction time); negative `steps` advances them.
    """
    values = np.asarray(values)
    n = values.shape[0]
    if steps == 0 or n == 0:
        return values.copy()
    index = np.clip(np.arange(n) - steps, 0, n - 1)
    return values[index]


def median_smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Running median over `window` steps (centred, edges replicated) along axis 0."""
    if window <= 1:
        return np.asarray(values).copy()
    return ndimage.median_filter(np.asarray(values), size=window, axes=(0,), mode="nearest")


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred running mean over `window` steps along axis 0, the edges held at the first/last
    value (`window` <= 1: unchanged)."""
    values = np.asarray(values, np.float64)
    if window <= 1:
        return values.copy()
    return ndimage.uniform_filter1d(values, size=window, axis=0, mode="nearest")


def smoothed(values: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
    """The `smooth` step: c + g (MA_w(x) - c), the moving average with its spread restored (g, c
    fitted on dev: the pooled std of the outputs before / after the average, and the pooled mean
    after it), so the step changes the outputs' time course, not their spread."""
    return _restored(moving_average(values, int(p["window"])), p)


def _restored(average: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
    """c + g (average - c): a moving average with the spread `smooth` fitted."""
    return p["center"] + p["gain"] * (average - p["center"])


def _apply_step(
    step: str, values: np.ndarray, p: Mapping[str, Any], stream: tuple | None = None
) -> np.ndarray:
    """One step on one session's one dimension [T] (`stream`: (head [T], presence [T]) of that
    dimension: the face head and n for face_weight, the voice head and m for voice_weight)."""
    if step in HEAD_STEPS:
        return toward_head(values, stream[0], stream[1], float(p["weight"]))
    if step == "delay":
        return shift(values, int(p["steps"]))
    if step == "smooth":
        return smoothed(values, p)
    if step == "bias":
        return values + p["offset"]
    if step == "scale":
        return p["center"] + p["factor"] * (values - p["center"])
    if step == "median":
        return median_smooth(values, int(p["window"]))
    raise ValueError(f"unknown post-processing step {step!r}")


def _pooled_ccc(predictions: Sequence[np.ndarray], gold: Sequence[np.ndarray]) -> float:
    return ccc(np.concatenate(predictions), np.concatenate(gold))


KEEP_RULES = ("cross_fitted", "in_sample")


def _without(items: Sequence[np.ndarray], i: int) -> list[np.ndarray]:
    return [x for j, x in enumerate(items) if j != i]


def _smooth_params(
    current: Sequence[np.ndarray], gold: Sequence[np.ndarray], windows: Sequence[int]
) -> dict[str, Any]:
    """The window in `windows` whose spread-restored moving average maximises pooled dev CCC
    (ties: the shortest), with its gain and centre."""
    pooled_std = np.concatenate(current).std()
    best = None
    for window in sorted({int(w) for w in windows}):
        averages = [moving_average(x, window) for x in current]
        pooled = np.concatenate(averages)
        spread = pooled.std()
        p = {
            "window": window,
            "gain": float(pooled_std / spread) if spread > 0 else 1.0,
            "center": float(pooled.mean()),
        }
        score = _pooled_ccc([_restored(a, p) for a in averages], gold)  # each average once
        if best is None or score > best[0]:
            best = (score, p)
    return best[1]


def _step_params(
    step: str,
    current: Sequence[np.ndarray],
    gold: Sequence[np.ndarray],
    train_std: np.ndarray | None,
    d: int,
    cfg: ml_collections.ConfigDict,
    streams: Sequence[tuple] | None = None,
) -> dict[str, Any]:
    """One step's parameters for one dimension, fitted on `current` against `gold` (`streams`:
    the head step's stream per session)."""
    if step in HEAD_STEPS:
        scores = [
            (_pooled_ccc([toward_head(x, *h, w) for x, h in zip(current, streams)], gold), -w, w)
            for w in FACE_WEIGHTS
        ]
        return {"weight": float(max(scores)[2])}  # best CCC; ties: the smallest weight
    if step == "delay":
        limit = int(cfg.max_delay_steps)
        scores = [
            (_pooled_ccc([shift(x, s) for x in current], gold), -abs(s), s)
            for s in range(-limit, limit + 1)
        ]
        return {"steps": int(max(scores)[2])}  # best CCC; ties: smallest |shift|
    if step == "smooth":
        return _smooth_params(current, gold, cfg.smooth_windows)
    if step == "bias":
        return {"offset": float(np.concatenate(gold).mean() - np.concatenate(current).mean())}
    if step == "scale":
        pooled = np.concatenate(current)
        if train_std is None:
            raise ValueError("post-processing 'scale' needs training labels")
        spread = pooled.std()
        factor = float(train_std[d] / spread) if spread > 0 else 1.0
        return {
            "center": float(pooled.mean()),
            "factor": factor,
            "train_label_std": float(train_std[d]),
        }
    return {"window": int(cfg.median_window_steps)}


def fit(
    dev_predictions: Mapping[str, np.ndarray],
    dev_labels: Mapping[str, np.ndarray],
    train_labels: Sequence[np.ndarray],
    cfg: ml_collections.ConfigDict,
    dev_faces: Mapping[str, Face | None] | None = None,
    dev_voices: Mapping[str, Stream | None] | None = None,
) -> dict[str, Any]:
    """Fits the enabled steps, in order, on dev predictions; returns the parameters to save.

    Each step is fitted on the output of the steps before it, per dimension:
      face_weight: y + w n (f - y), f the model's face head (`video_outputs` of a model with
              modality heads), n the face-present flag, w in FACE_WEIGHTS maximising pooled dev
              CCC (issue 9: the gates are fitted on the training sessions, where a voice that
              learned their valence by heart looks as good as the face; this weight is fitted
              on sessions the model never trained on, and held out like every step below).
              Skipped, with a warning, without `dev_faces`;
      voice_weight: y + w m (v - y), v the model's voice head (`audio_outputs`), m the speech
              energy in [0, 1] the model saw (0 where the voice is silent), w as above. Why
              (issue 9, fifteenth stop): on the embedded corpus the fusion's gates, fitted on the
              training sessions, let the face into arousal where the voice reads it better on
              sessions the model never trained on (the face CNN learns the training sessions'
              arousal by heart); where the voice is silent or absent (m = 0) the output is left
              alone. Skipped, with a warning, without `dev_voices`;
      delay:  the shift s in [-max_delay_steps, max_delay_steps] maximising pooled dev CCC;
      smooth: a centred moving average over w steps, w in `smooth_windows` maximising pooled dev
              CCC, its spread restored to the outputs' before it (`smoothed`). Why: the gold
              standard is the mean of raters whose delays spread over 1-3 s and whose joysticks
              lag, i.e. a latent seen through a wide low-pass; a model's outputs carry faster
              errors that such a filter removes (issue 9, fifteenth stop: dev chose 4-10 s on the
              embedded corpus; +0.01 to +0.05 test CCC for every model). Centred, so a
              prediction looks w/2 steps ahead: turn it off for on-line use;
      bias:   offset = mean(dev gold) - mean(dev prediction) (removes the (mu_x - mu_y)^2 term
              of Eq. 35, so it never lowers CCC);
      scale:  y = c + f (x - c), c = mean(dev prediction), f = std(train labels) / std(dev
              prediction);
      median: running median over `median_window_steps`.
    Whether a step is kept (`cfg.keep_rule`):
      "in_sample": kept unless it lowers the pooled CCC of the very dev sessions it was fitted
        on -- which a fitted bias or delay almost never does, however little it generalises;
      "cross_fitted" (the default): kept only if it does not lower the pooled dev CCC when each
        dev session gets the step fitted on the other dev sessions (leave-one-session-out), i.e.
        only if it helps sessions it was not fitted on. With one dev session there is nothing to
        hold out and the in-sample rule decides.
    A step not kept is recorded with `applied: false` and skipped.

    Args:
      dev_predictions: {session: [T, 2]} raw model outputs on dev sessions.
      dev_labels: {session: [T, 2]} their gold standard.
      train_labels: [T, 2] gold standards of the training sessions (for the label spread).
      cfg: `config.postprocess`.
      dev_faces: {session: `face_of(...)`}, for face_weight.
      dev_voices: {session: `voice_of(...)`}, for voice_weight.

    Returns:
      {"version", "sessions", "dimensions": {dim: {step: {..., applied, ccc_before, ccc_after,
      ccc_if_applied[, ccc_held_out_if_applied]}}}, "keep_rule"}.
    """
    names = sorted(dev_predictions)
    if not names:
        raise ValueError("post-processing needs at least one dev session with labels")
    rule = cfg.keep_rule
    if rule not in KEEP_RULES:
        raise ValueError(f"postprocess.keep_rule must be one of {KEEP_RULES}, got {rule!r}")
    held_out = rule == "cross_fitted" and len(names) >= 2
    train_std = (
        np.concatenate([np.asarray(t, np.float64) for t in train_labels]).std(axis=0)
        if len(train_labels)
        else None
    )
    given = {"face": dev_faces, "voice": dev_voices}
    have = {
        kind: streams is not None and all(streams.get(n) is not None for n in names)
        for kind, streams in given.items()
    }
    for step, kind in HEAD_STEPS.items():
        if cfg.get(step, False) and not have[kind]:
            log.warning("postprocess.%s skipped: the model has no %s head to weigh", step, kind)
    dimensions = {}
    for d, dim in enumerate(DIMENSIONS):
        current = [np.asarray(dev_predictions[n][:, d], np.float64) for n in names]
        gold = [np.asarray(dev_labels[n][:, d], np.float64) for n in names]
        per_kind = {
            kind: [(given[kind][n][0][:, d], given[kind][n][1]) for n in names]
            for kind in given
            if have[kind]
        }
        steps: dict[str, dict[str, Any]] = {}
        for step in STEPS:
            if not cfg.get(step, False) or (step in HEAD_STEPS and not have[HEAD_STEPS[step]]):
                continue
            streams = per_kind[HEAD_STEPS[step]] if step in HEAD_STEPS else None
            before = _pooled_ccc(current, gold)
            params = _step_params(step, current, gold, train_std, d, cfg, streams)
            candidate = [
                _apply_step(step, x, params, streams[i] if streams else None)
                for i, x in enumerate(current)
            ]
            after = _pooled_ccc(candidate, gold)
            record = dict(params)
            if held_out:  # each session with the step fitted on the others
                outside = [
                    _apply_step(
                        step,
                        x,
                        _step_params(
                            step,
                            _without(current, i),
                            _without(gold, i),
                            train_std,
                            d,
                            cfg,
                            _without(streams, i) if streams else None,
                        ),
                        streams[i] if streams else None,
                    )
                    for i, x in enumerate(current)
                ]
                score = record["ccc_held_out_if_applied"] = _pooled_ccc(outside, gold)
            else:
                score = after
            applied = score >= before
            if applied:
                current = candidate
            steps[step] = {
                **record,
                "applied": bool(applied),
                "ccc_before": before,
                "ccc_after": after if applied else before,
                "ccc_if_applied": after,
            }
        dimensions[dim] = steps
    return {
        "version": VERSION,
        "fitted_on": names,
        "keep_rule": rule if held_out else "in_sample",
        "dimensions": dimensions,
    }


def cross_fit(
    dev_predictions: Mapping[str, np.ndarray],
    dev_labels: Mapping[str, np.ndarray],
    train_labels: Sequence[np.ndarray],
    cfg: ml_collections.ConfigDict,
    dev_faces: Mapping[str, Face | None] | None = None,
    dev_voices: Mapping[str, Stream | None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Leave-one-dev-session-out fits: {session: parameters fitted on the other dev sessions}.

    Apply `result[s]` to session s's outputs (under any input condition) for out-of-sample dev
    figures. Needs at least two dev sessions.

    Raises:
      ValueError: with fewer than two dev sessions.
    """
    names = sorted(dev_predictions)
    if len(names) < 2:
        raise ValueError(
            f"cross-fitted post-processing needs at least two dev sessions, got {len(names)}"
        )
    folds = {}
    for held_out in names:
        others = [n for n in names if n != held_out]
        folds[held_out] = fit(
            {n: dev_predictions[n] for n in others},
            {n: dev_labels[n] for n in others},
            train_labels,
            cfg,
            None if dev_faces is None else {n: dev_faces.get(n) for n in others},
            None if dev_voices is None else {n: dev_voices.get(n) for n in others},
        )
    return folds


def apply(
    outputs: np.ndarray,
    params: Mapping[str, Any] | None,
    face: Face | None = None,
    voice: Stream | None = None,
) -> np.ndarray:
    """The fitted steps on one session's outputs [T, 2] (None: unchanged); `face`
    (`face_of(...)`) for parameters with face_weight applied, `voice` (`voice_of(...)`) for
    voice_weight.

    Raises:
      ValueError: face_weight (voice_weight) applied and no `face` (`voice`) given.
    """
    streams = {"face": face, "voice": voice}
    outputs = np.asarray(outputs, np.float64)
    if params is None:
        return outputs.astype(np.float32)
    result = outputs.copy()
    for d, dim in enumerate(DIMENSIONS):
        steps = params["dimensions"].get(dim, {})
        values = outputs[:, d]
        for step in STEPS:  # always in the fitted order
            if step in steps and steps[step]["applied"]:
                stream = streams[HEAD_STEPS[step]] if step in HEAD_STEPS else None
                if step in HEAD_STEPS and stream is None:
                    raise ValueError(
                        f"post-processing with {step} needs the model's {HEAD_STEPS[step]} head "
                        f"outputs and the stream's presence (postprocess."
                        f"{HEAD_STEPS[step]}_of)"
                    )
                per_dim = (stream[0][:, d], stream[1]) if stream is not None else None
                values = _apply_step(step, values, steps[step], per_dim)
        result[:, d] = values
    return result.astype(np.float32)


def save(workdir: str | os.PathLike, params: Mapping[str, Any]) -> pathlib.Path:
    """Writes `workdir/postprocess.json` atomically."""
    path = pathlib.Path(workdir) / FILE
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{FILE}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump(params, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


class StaleError(ValueError):
    """The saved post-processing was fitted on another checkpoint than the one being used."""


def load(workdir: str | os.PathLike, checkpoint_step: int | None = None) -> dict[str, Any] | None:
    """The saved parameters of `workdir`, or None when none were fitted.

    With `checkpoint_step`, the parameters must have been fitted on that checkpoint's dev
    predictions (parameters of another checkpoint would shift and scale the wrong outputs).

    Raises:
      StaleError: fitted on another checkpoint (or the file does not say which).
      ValueError: an unsupported file version.
    """
    path = pathlib.Path(workdir) / FILE
    if not path.is_file():
        return None
    params = json.loads(path.read_text())
    if params.get("version") != VERSION:
        raise ValueError(f"{path}: post-processing version {params.get('version')} unsupported")
    if checkpoint_step is not None and params.get("checkpoint_step") != checkpoint_step:
        raise StaleError(
            f"{path} was fitted on checkpoint step {params.get('checkpoint_step')}, not on step "
            f"{checkpoint_step} in use; run python -m avemo.evaluate --workdir {workdir} "
            "to fit it again on dev"
        )
    return params


def summary_rows(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per dimension and step: parameters and dev CCC before/after, for reports."""
    rows = []
    for dim, steps in params["dimensions"].items():
        for step, p in steps.items():
            detail = {
                k: v
                for k, v in p.items()
                if k not in ("applied", "ccc_before", "ccc_after", "ccc_if_applied")
            }
            rows.append(
                {
                    "dimension": dim,
                    "step": step,
                    "applied": p["applied"],
                    "ccc_before": p["ccc_before"],
                    "ccc_after": p["ccc_after"],
                    "ccc_if_applied": p["ccc_if_applied"],
                    "parameters": ", ".join(
                        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in detail.items()
                    ),
                }
            )
    return rows
