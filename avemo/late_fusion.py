"""Late fusion: a linear stack of trained models' predictions, fitted on dev (the AVEC baselines'
way of fusing modalities), scored like any avemo model.

trained workdirs (e.g. audio only + video only) -> each model's outputs on the same sessions ->
per dimension, gold ≈ X w with X the members' outputs (both dimensions of each member, and an
intercept), w by ridge least squares on the dev sessions -> the post-processing and reports of
`avemo.evaluate` (`OUT/reports/`, test: `OUT/reports/test/`), weights in `OUT/late_fusion.json`.

Run: python -m avemo.late_fusion --members W_AUDIO W_VIDEO --workdir OUT [--split dev|test]
     [--features linear|gated]

Why it is here: it is the baseline every fusion model has to beat (the AVEC 2016 baseline fused
its unimodal systems this way), and it measures what the single-modality models know between
them at the output: how much one modality's predictions add to the other's.

Members: any trained workdirs on the same sessions; with --heads, a fusion member trained with
per-modality heads also contributes its voice head and its face head, so one fusion model alone
can be stacked from its own three outputs (no training beyond its own).

Features:
  linear  [outputs of each member, 1]: one weight per member output for the whole session.
  gated   linear + each member output × n_t and × m_t, and n_t, m_t themselves (n: the face flag,
          m: the speech energy of the session's own front end, 0 under the protocols that remove
          the stream): the weights may move between the members where a face or a voice is absent,
          a gate computed from the availability signals alone.

Held-out figures: every member is read at its own best-by-dev checkpoint; the stack is fitted on
dev only. Dev figures are out-of-fold (each dev session stacked with the weights fitted on the
other dev sessions, then the post-processing cross-fitted as in `avemo.evaluate`); test figures
use the weights fitted on all dev sessions, and read the test gold standard only there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from avemo import evaluate, postprocess
from avemo.data.pipeline import PreparedSession
from avemo.metrics import DIMENSIONS
from avemo.reporting.figures import write_atomically

log = logging.getLogger("avemo")

FEATURES = ("linear", "gated")
RESULT_FILE = "late_fusion.json"


class LateFusionError(ValueError):
    """Members that cannot be stacked (one message naming the workdirs and what differs)."""


# ------------------------------------------------------------------------------- the stack


def design_matrix(
    outputs: Sequence[np.ndarray], face_present: np.ndarray, speech_energy: np.ndarray, kind: str
) -> np.ndarray:
    """[T, F] features of one session from the members' outputs ([T, 2] each) and its n, m."""
    if kind not in FEATURES:
        raise ValueError(f"late-fusion features must be one of {FEATURES}, got {kind!r}")
    preds = np.concatenate([np.asarray(o, np.float64) for o in outputs], axis=1)
    ones = np.ones((preds.shape[0], 1))
    if kind == "linear":
        return np.concatenate([preds, ones], axis=1)
    n = np.asarray(face_present, np.float64)[:, None]
    m = np.asarray(speech_energy, np.float64)[:, None]
    return np.concatenate([preds, preds * n, preds * m, n, m, ones], axis=1)


def fit_weights(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], ridge: float) -> np.ndarray:
    """[F, 2] weights minimising Σ_t |y_t − x_t w|² + ridge · T · |w|² (intercept, the last
    column, unpenalised): ridge least squares per dimension over the given sessions."""
    x = np.concatenate(xs)
    y = np.concatenate([np.asarray(v, np.float64) for v in ys])
    penalty = np.full(x.shape[1], ridge * x.shape[0])
    penalty[-1] = 0.0
    return np.linalg.solve(x.T @ x + np.diag(penalty), x.T @ y)


def fit_folds(
    xs: Mapping[str, np.ndarray], ys: Mapping[str, np.ndarray], ridge: float
) -> dict[str, np.ndarray]:
    """{dev session: weights fitted on the other dev sessions} (leave one session out)."""
    names = sorted(xs)
    if len(names) < 2:
        raise ValueError(f"out-of-fold stacking needs at least two dev sessions, got {len(names)}")
    return {
        held: fit_weights([xs[n] for n in names if n != held], [ys[n] for n in names if n != held],
                          ridge)
        for held in names
    }  # fmt: skip


# ----------------------------------------------------------------------------- the members


class _Member:
    """One trained workdir: its model (best by dev), its sessions and degraded inputs."""

    def __init__(self, workdir: str, heads: bool = False):
        from avemo import inference

        self.workdir = os.path.abspath(workdir)
        self.model = inference.load(self.workdir, "best")
        model_cfg = self.model.config.model
        # The prediction keys this member contributes: its output, and with `heads` each
        # stream's own head (a fusion model trained with model.modality_heads).
        self.keys = ["outputs"]
        if heads and model_cfg.mode == "fusion" and model_cfg.modality_heads:
            self.keys += ["audio_outputs", "video_outputs"]
        self.inputs = evaluate.EvalInputs(self.model.config, self.workdir)
        self._cache: dict[tuple[str, str], np.ndarray] = {}

    def sessions(self, split: str, test_labels: str | None) -> list[PreparedSession]:
        if split == "test":
            return self.inputs.test_sessions(test_labels)
        return [s for s in self.inputs.sessions if s.split == split and s.has_labels]

    def outputs(self, protocol: str, sessions: Sequence[PreparedSession]) -> dict[str, np.ndarray]:
        """{session: [T, 2 · len(keys)]} outputs under `protocol` (each computed once)."""
        todo = [s for s in sessions if (protocol, s.name) not in self._cache]
        if todo:
            degraded = self.inputs.protocol(protocol, todo)
            if degraded is None:
                raise LateFusionError(f"{self.workdir}: protocol {protocol} needs recordings")
            for name, result in self.model.predict(degraded).items():
                self._cache[(protocol, name)] = np.concatenate(
                    [np.asarray(result[k]) for k in self.keys], axis=-1
                )
        return {s.name: self._cache[(protocol, s.name)] for s in sessions}


def _check_sessions(members: Sequence[_Member], per_member: Sequence[Sequence[PreparedSession]]):
    reference = {s.name: s.num_steps for s in per_member[0]}
    for member, sessions in zip(members[1:], per_member[1:], strict=True):
        theirs = {s.name: s.num_steps for s in sessions}
        if theirs != reference:
            raise LateFusionError(
                f"{members[0].workdir} and {member.workdir} do not hold the same sessions "
                f"(names and step counts): {sorted(reference.items())} vs {sorted(theirs.items())}"
            )


# ------------------------------------------------------------------------------- run it


def run(
    members: Sequence[str],
    workdir: str,
    split: str = "test",
    features: str = "linear",
    ridge: float = 1e-3,
    protocols: Sequence[str] = evaluate.PROTOCOLS,
    test_labels: str | None = None,
    heads: bool = False,
) -> dict[str, Any]:
    """Fits the stack on dev, scores `split`, writes `workdir`'s reports; returns the summary.

    `heads`: a fusion member trained with per-modality heads contributes their outputs too (one
    member alone then stacks its own fused, voice and face heads: no extra training budget)."""
    if split not in ("dev", "test"):
        raise ValueError(f"split {split!r}: choose 'dev' or 'test'")
    if features not in FEATURES:
        raise ValueError(f"--features must be one of {FEATURES}, got {features!r}")
    if not members:
        raise LateFusionError("late fusion needs at least one member workdir")
    loaded = [_Member(w, heads) for w in members]
    config = loaded[0].model.config
    dev_per = [m.sessions("dev", None) for m in loaded]
    if not dev_per[0]:
        raise LateFusionError(f"{loaded[0].workdir}: no labelled dev sessions to fit the stack on")
    _check_sessions(loaded, dev_per)
    dev = dev_per[0]
    evaluated_per = dev_per if split == "dev" else [m.sessions("test", test_labels) for m in loaded]
    _check_sessions(loaded, evaluated_per)
    evaluated = evaluated_per[0]
    if not evaluated:
        raise LateFusionError(f"{loaded[0].workdir}: no labelled {split} sessions to score")

    def stacked_inputs(protocol: str, per_member) -> dict[str, np.ndarray]:
        outs = [m.outputs(protocol, s) for m, s in zip(loaded, per_member, strict=True)]
        shown = loaded[0].inputs.protocol(protocol, per_member[0])  # this protocol's n and m
        return {
            s.name: design_matrix(
                [o[s.name] for o in outs], s.arrays["face_present"], s.arrays["speech_energy"],
                features,
            )
            for s in shown
        }  # fmt: skip

    x_dev = stacked_inputs("normal", dev_per)
    y_dev = {s.name: np.asarray(s.arrays["labels"], np.float64) for s in dev}
    weights = fit_weights([x_dev[s.name] for s in dev], [y_dev[s.name] for s in dev], ridge)
    stack_folds = fit_folds(x_dev, y_dev, ridge) if len(dev) >= 2 else None
    if stack_folds is None:
        log.warning("One dev session: the stack is fitted and (dev) scored in-sample.")

    def weights_for(name: str) -> np.ndarray:
        # Dev sessions are stacked out of fold, so nothing downstream sees an in-sample stack.
        if stack_folds is not None and name in stack_folds:
            return stack_folds[name]
        return weights

    by_member = [{s.name: s for s in dev_per[k] + evaluated_per[k]} for k in range(len(loaded))]

    def predict(protocol: str, names: Sequence[str]) -> dict[str, dict]:
        """The stacked outputs of the named sessions under `protocol`."""
        x = stacked_inputs(protocol, [[sessions[n] for n in names] for sessions in by_member])
        return {n: {"outputs": (x[n] @ weights_for(n)).astype(np.float32)} for n in names}

    out_dir = evaluate.report_dir(workdir, split)
    train_labels = [
        s.arrays["labels"] for s in loaded[0].inputs.sessions if s.split == "train" and s.has_labels
    ]
    normal = predict("normal", list(by_member[0]))  # the dev and the evaluated sessions
    dev_out = {s.name: normal[s.name]["outputs"] for s in dev}
    params = postprocess.fit(dev_out, y_dev, train_labels, config.postprocess)
    post_folds = None
    fit_note = "stack and post-processing fitted on all dev sessions"
    if split == "dev" and len(dev) >= 2:
        post_folds = postprocess.cross_fit(dev_out, y_dev, train_labels, config.postprocess)
        fit_note = "stack out of fold, post-processing cross-fitted (leave one dev session out)"
    elif split == "dev":
        fit_note = "IN-SAMPLE (fitted and scored on the only dev session; optimistic)"
    stage_params = evaluate.stage_parameters(evaluated, params, post_folds)
    results = {}
    for protocol in protocols:
        shown = loaded[0].inputs.protocol(protocol, evaluated)  # the labels and this n, m
        shown_names = [s.name for s in evaluated]
        predictions = normal if protocol == "normal" else predict(protocol, shown_names)
        results[protocol] = evaluate.score(protocol, shown, predictions, stage_params)
    steps = " + ".join(str(m.model.step) for m in loaded)  # each member's best-by-dev step
    summary = evaluate.build_summary(workdir, steps, "best", split, results, params, fit_note)
    summary["members"] = [m.workdir for m in loaded]
    summary["checkpoint"] = "best of each member"
    names = [  # the members' output columns, in the design matrix's order: "audio0:arousal",
        # "fusion0.video_outputs:valence", ...
        f"{m.model.config.model.mode}{k}{'' if key == 'outputs' else '.' + key}:{dim}"
        for k, m in enumerate(loaded)
        for key in m.keys
        for dim in DIMENSIONS
    ]
    record = {
        "members": [
            {"workdir": m.workdir, "mode": m.model.config.model.mode, "step": m.model.step}
            for m in loaded
        ],
        "features": features,
        "heads": heads,
        "ridge": ridge,
        "feature_names": _feature_names(names, features),
        "weights": {dim: weights[:, d].tolist() for d, dim in enumerate(DIMENSIONS)},
        "fitted_on": sorted(y_dev),
        "split": split,
        "summary": summary["robustness"].get("normal"),
    }
    evaluate.write_reports(out_dir, summary, results, params)
    text = json.dumps(record, indent=2, default=evaluate.json_float)
    write_atomically(os.path.join(workdir, RESULT_FILE), text)
    return summary


def _feature_names(outputs: Sequence[str], kind: str) -> list[str]:
    if kind == "linear":
        return [*outputs, "1"]
    return [*outputs, *(f"{o}*n" for o in outputs), *(f"{o}*m" for o in outputs), "n", "m", "1"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avemo.late_fusion", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--members", nargs="+", required=True, help="trained avemo workdirs")
    parser.add_argument("--workdir", required=True, help="where the reports are written")
    parser.add_argument("--split", choices=("dev", "test"), default="test")
    parser.add_argument("--features", choices=FEATURES, default="linear")
    parser.add_argument("--ridge", type=float, default=1e-3, help="ridge weight (per step)")
    parser.add_argument(
        "--protocols", nargs="+", choices=evaluate.PROTOCOLS, default=list(evaluate.PROTOCOLS)
    )
    parser.add_argument("--test-labels", help="as for avemo.evaluate")
    parser.add_argument(
        "--heads", action="store_true",
        help="also stack each fusion member's per-modality heads (model.modality_heads)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from avemo.inference import NoModelError

    if args.ridge < 0:
        print("avemo.late_fusion: error: --ridge must be >= 0", file=sys.stderr)
        return 2
    try:
        summary = run(
            args.members, args.workdir, args.split, args.features, args.ridge,
            tuple(args.protocols), args.test_labels, args.heads,
        )  # fmt: skip
    except (NoModelError, ValueError, OSError) as err:
        print(f"avemo.late_fusion: error: {err}", file=sys.stderr)
        return 1
    print((evaluate.report_dir(summary["workdir"], args.split) / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
