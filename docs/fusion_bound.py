"""How much a read-out of two trained models' outputs can reach on the test split (docs/fusion.md,
fifteenth stop): an upper bound on what fusing them can give on the embedded corpus.

    python docs/fusion_bound.py W_AUDIO W_VIDEO [--lag-steps 40] [--lag-stride 8]

For each read-out the gold standard of the hidden test sessions is regressed (least squares, a
small ridge) on the members' raw outputs (both dimensions of each member, an intercept), with
copies of them shifted by -lag ... +lag steps (a temporal filter), and, for the oracle gate, one
set of weights per segment kind of the generator's ground truth (normal, no face, silence,
second speaker: a gate no model has). Each read-out is scored fitted **on the test labels
themselves** (in-sample: an optimistic bound) and fitted leave-one-test-session-out. Only for
the embedded corpus (it reads the generator's ground truth) and for analysis: never for
selection or reporting a model.
"""

import argparse
import pathlib

import numpy as np

from avemo import evaluate, late_fusion
from avemo.data.corpora import synthetic
from avemo.metrics import ccc


def lagged(x: np.ndarray, lags) -> np.ndarray:
    """[T, F * len(lags)]: x shifted by each lag (edges held)."""
    n = x.shape[0]
    return np.concatenate([x[np.clip(np.arange(n) - lag, 0, n - 1)] for lag in lags], axis=1)


def design(outputs, segment, lags, gated: bool) -> np.ndarray:
    x = np.concatenate(
        [lagged(np.concatenate(outputs, axis=1), lags), np.ones((len(segment), 1))], 1
    )
    if not gated:
        return x
    return np.concatenate(
        [x * (segment == k)[:, None] for k in range(len(synthetic.SEGMENT_NAMES))], 1
    )


def fit(xs, ys, ridge=1e-3):
    x, y = np.concatenate(xs), np.concatenate(ys)
    return np.linalg.solve(x.T @ x + ridge * len(x) * np.eye(x.shape[1]), x.T @ y)


def pooled_ccc(preds, golds):
    p, g = np.concatenate(preds), np.concatenate(golds)
    return [ccc(p[:, d], g[:, d]) for d in range(2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("members", nargs="+", help="trained workdirs on the same sessions")
    parser.add_argument("--lag-steps", type=int, default=40)
    parser.add_argument("--lag-stride", type=int, default=8)
    args = parser.parse_args()
    members = [late_fusion._Member(w) for w in args.members]
    sessions = members[0].sessions("test", None)
    outputs = [m.outputs("normal", m.sessions("test", None)) for m in members]
    root = evaluate.corpus_root(members[0].model.config)
    names = [s.name for s in sessions]
    gold = {s.name: np.asarray(s.arrays["labels"], np.float64) for s in sessions}
    segment = {
        n: np.load(root / synthetic.HIDDEN_DIR / "ground_truth" / f"{n}.npz")["segment"][
            : len(gold[n])
        ]
        for n in names
    }
    lags = range(-args.lag_steps, args.lag_steps + 1, args.lag_stride)
    for which in [[k] for k in range(len(members))] + (
        [list(range(len(members)))] if len(members) > 1 else []
    ):
        label = " + ".join(pathlib.Path(args.members[k]).as_posix() for k in which)
        for name, use_lags, gated in (("linear", (0,), False), ("filter", lags, False),
                                      ("filter + oracle gate", lags, True)):  # fmt: skip
            x = {
                n: design([outputs[k][n] for k in which], segment[n], use_lags, gated)
                for n in names
            }
            w = fit([x[n] for n in names], [gold[n] for n in names])
            in_sample = pooled_ccc([x[n] @ w for n in names], [gold[n] for n in names])
            held = [
                x[h] @ fit([x[n] for n in names if n != h], [gold[n] for n in names if n != h])
                for h in names
            ]
            out = pooled_ccc(held, [gold[n] for n in names])
            print(f"{label} | {name}: in-sample {in_sample[0]:.3f} / {in_sample[1]:.3f}, "
                  f"leave-one-test-session-out {out[0]:.3f} / {out[1]:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
