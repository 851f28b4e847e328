"""CCC (Eq. 35-36), R^2 (Eq. 34), RMSE (Eq. 37) against independent NumPy computations."""

import numpy as np
import pytest

from avemo import metrics


def _ccc_via_pearson(x, y):
    # Independent route through Eq. (36): rho from np.corrcoef, population standard deviations.
    rho = np.corrcoef(x, y)[0, 1]
    sx, sy = np.std(x), np.std(y)
    return 2 * rho * sx * sy / (sx**2 + sy**2 + (np.mean(x) - np.mean(y)) ** 2)


@pytest.fixture
def signals():
    rng = np.random.default_rng(0)
    y = np.cumsum(rng.standard_normal(500)) / 10
    return y + 0.3 * rng.standard_normal(500), y


def test_ccc_against_pearson_route(signals):
    x, y = signals
    np.testing.assert_allclose(metrics.ccc(x, y), _ccc_via_pearson(x, y), rtol=1e-10)


def test_ccc_special_cases(signals):
    _, y = signals
    assert metrics.ccc(y, y) == pytest.approx(1.0)
    assert metrics.ccc(-y + 2 * y.mean(), y) == pytest.approx(-1.0)
    assert metrics.ccc(np.full_like(y, y.mean()), y) == pytest.approx(0.0)
    shifted = metrics.ccc(y + 0.5, y)
    assert shifted == pytest.approx(2 * y.var() / (2 * y.var() + 0.25))
    assert shifted < 1.0


def test_r2_and_rmse(signals):
    x, y = signals
    expected_r2 = 1 - np.sum((y - x) ** 2) / np.sum((y - y.mean()) ** 2)
    assert metrics.r2(y, x) == pytest.approx(expected_r2)
    assert metrics.r2(y, y) == pytest.approx(1.0)
    assert metrics.r2(y, np.full_like(y, y.mean())) == pytest.approx(0.0)
    assert metrics.rmse(x, y) == pytest.approx(np.sqrt(np.mean((x - y) ** 2)))
    assert metrics.rmse(y + 0.5, y) == pytest.approx(0.5)


def test_pooled_and_session_mean_differ_as_defined():
    rng = np.random.default_rng(1)
    targets = {"a": rng.standard_normal((100, 2)), "b": rng.standard_normal((80, 2)) + 3}
    preds = {"a": targets["a"] * 0.5, "b": targets["b"] + 1.0}
    out = metrics.evaluate_sessions(preds, targets)
    pooled = metrics.ccc(
        np.concatenate([preds["a"][:, 0], preds["b"][:, 0]]),
        np.concatenate([targets["a"][:, 0], targets["b"][:, 0]]),
    )
    per = np.mean([metrics.ccc(preds[k][:, 0], targets[k][:, 0]) for k in "ab"])
    assert out["ccc_pooled/arousal"] == pytest.approx(pooled)
    assert out["ccc_session_mean/arousal"] == pytest.approx(per)
    assert out["ccc_pooled/arousal"] != pytest.approx(out["ccc_session_mean/arousal"])
    assert out["rmse_pooled/mean"] == pytest.approx(
        np.mean([out["rmse_pooled/arousal"], out["rmse_pooled/valence"]])
    )
