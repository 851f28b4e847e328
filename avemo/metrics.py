"""Evaluation metrics on whole sessions: CCC (Eq. 35-36), R^2 (Eq. 34) and RMSE (Eq. 37).

NumPy (float64) functions over concatenated session predictions; each metric is reported pooled
over all frames (`*_pooled/...`, the AVEC convention) and averaged over sessions
(`*_session_mean/...`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

DIMENSIONS = ("arousal", "valence")


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Eq. (35): 2 rho s_x s_y / (s_x^2 + s_y^2 + (mu_x - mu_y)^2), population moments (Eq. 36).

    Two constant, equal sequences have CCC 1; a constant sequence against a varying one has 0.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    mu_x, mu_y = x.mean(), y.mean()
    cov = np.mean((x - mu_x) * (y - mu_y))
    denominator = x.var() + y.var() + (mu_x - mu_y) ** 2
    if denominator == 0.0:
        return 1.0
    return float(2.0 * cov / denominator)


def r2(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Eq. (34): 1 - sum (y - y_hat)^2 / sum (y - y_mean)^2 (0 for a constant target)."""
    actual = np.asarray(actual, np.float64)
    predicted = np.asarray(predicted, np.float64)
    total = np.sum((actual - actual.mean()) ** 2)
    residual = np.sum((actual - predicted) ** 2)
    if total == 0.0:
        return 1.0 if residual == 0.0 else 0.0
    return float(1.0 - residual / total)


def rmse(x: np.ndarray, y: np.ndarray) -> float:
    """Eq. (37): sqrt(1/n sum (x_i - y_i)^2)."""
    return float(np.sqrt(np.mean((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2)))


_METRICS = {"ccc": lambda p, t: ccc(p, t), "r2": lambda p, t: r2(t, p), "rmse": rmse}


def evaluate_sessions(
    predictions: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    dimensions: Sequence[str] = DIMENSIONS,
) -> dict[str, float]:
    """Metrics over sessions given as {name: [T, D]} predictions and targets.

    Returns keys like `ccc_pooled/arousal`, `ccc_session_mean/valence`, and `/mean` over dimensions.
    """
    names = sorted(predictions)
    if not names:
        raise ValueError("no sessions to evaluate")
    results: dict[str, float] = {}
    for metric, fn in _METRICS.items():
        for d, dim in enumerate(dimensions):
            pooled_p = np.concatenate([predictions[n][:, d] for n in names])
            pooled_t = np.concatenate([targets[n][:, d] for n in names])
            results[f"{metric}_pooled/{dim}"] = fn(pooled_p, pooled_t)
            results[f"{metric}_session_mean/{dim}"] = float(
                np.mean([fn(predictions[n][:, d], targets[n][:, d]) for n in names])
            )
        for kind in ("pooled", "session_mean"):
            results[f"{metric}_{kind}/mean"] = float(
                np.mean([results[f"{metric}_{kind}/{dim}"] for dim in dimensions])
            )
    return results
