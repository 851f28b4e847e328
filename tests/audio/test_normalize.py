"""Z-normalisation (Eq. 9): training sessions only, saved atomically, applied unchanged."""

import os

import numpy as np
import pytest

from avemo.audio import normalize


def _sessions():
    rng = np.random.default_rng(0)
    features = {
        "train_1": rng.normal(0.0, 1.0, (300, 3)),
        "train_2": rng.normal(2.0, 3.0, (200, 3)),
        "dev_1": rng.normal(100.0, 50.0, (300, 3)),
        "test_1": rng.normal(60.0, 50.0, (300, 3)),
    }
    splits = {"train_1": "train", "train_2": "train", "dev_1": "dev", "test_1": "test"}
    return features, splits


def test_statistics_come_from_training_sessions_only():
    features, splits = _sessions()
    fitted = normalize.fit_training(features, splits, names=["a", "b", "c"])
    training = np.concatenate([features["train_1"], features["train_2"]])
    np.testing.assert_allclose(fitted.mean, training.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(fitted.std, training.std(axis=0), rtol=1e-10)
    assert fitted.num_rows == 500
    # Dev or test rows would move the mean by tens and the std by more: they did not leak.
    for leaked in ("dev_1", "test_1"):
        with_leak = np.concatenate([training, features[leaked]])
        assert np.abs(fitted.mean - with_leak.mean(axis=0)).min() > 10.0
        assert np.abs(fitted.std - with_leak.std(axis=0)).min() > 10.0
    normalised = normalize.apply(training, fitted)
    np.testing.assert_allclose(normalised.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(normalised.std(axis=0), 1, atol=1e-5)


def test_no_training_session_is_an_error():
    features, splits = _sessions()
    with pytest.raises(ValueError, match="no training session"):
        normalize.fit_training({"dev_1": features["dev_1"]}, splits)
    with pytest.raises(ValueError, match="without a split"):
        normalize.fit_training({"other": features["dev_1"]}, splits)


def test_constant_column_becomes_zero_not_nan():
    x = np.c_[np.ones(10), np.arange(10.0)]
    fitted = normalize.fit([x])
    out = normalize.apply(x, fitted)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[:, 0], 0)


def test_save_load_round_trip_is_atomic(tmp_path):
    features, splits = _sessions()
    fitted = normalize.fit_training(features, splits, names=["a", "b", "c"])
    path = tmp_path / "model" / "audio_norm.npz"
    normalize.save(path, fitted)
    normalize.save(path, fitted)  # Overwriting in place works.
    assert sorted(os.listdir(path.parent)) == ["audio_norm.npz"]  # No temporary left over.
    loaded = normalize.load(path)
    np.testing.assert_array_equal(loaded.mean, fitted.mean)
    np.testing.assert_array_equal(loaded.std, fitted.std)
    assert loaded.names == ("a", "b", "c") and loaded.num_rows == 500
    x = features["dev_1"]
    np.testing.assert_array_equal(normalize.apply(x, loaded), normalize.apply(x, fitted))
    with pytest.raises(ValueError, match="columns"):
        normalize.apply(x[:, :2], loaded)
    with pytest.raises(ValueError, match="differ"):
        normalize.apply(x, loaded, names=["a", "c", "b"])
