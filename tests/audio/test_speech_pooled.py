"""Speech-weighted pooling of the audio features (audio.features.speech_pooled_seconds, issue 9)."""

import numpy as np
import pytest

from avemo import config as config_lib
from avemo.audio import config, features, frontend
from tests.audio.audio_signals import RATE, bursts


def _direct(table, m, window, alignment, floor=features.SPEECH_POOL_FLOOR):
    """The definition, step by step: sum over the window of (m + floor) x / sum of (m + floor)."""
    steps = table.shape[0]
    pooled, share = np.zeros_like(table, dtype=np.float64), np.zeros(steps)
    for t in range(steps):
        first = t - window + 1 if alignment == "causal" else t - window // 2
        lo, hi = max(first, 0), min(first + window, steps)
        w = m[lo:hi] + floor
        pooled[t] = (w[:, None] * table[lo:hi]).sum(0) / w.sum()
        share[t] = m[lo:hi].mean()
    return pooled, share


@pytest.mark.parametrize("alignment", ["causal", "centred"])
@pytest.mark.parametrize("window", [1, 7, 30])
def test_equals_the_definition(alignment, window):
    rng = np.random.default_rng(window)
    table = rng.normal(50.0, 10.0, (23, 4))  # a large offset: the running sums stay exact
    m = np.where(rng.uniform(size=23) < 0.4, 0.0, rng.uniform(size=23))
    pooled, share = features.speech_pooled(table, m, window, alignment)
    want, want_share = _direct(table, m, window, alignment)
    np.testing.assert_allclose(pooled, want, rtol=1e-5)
    np.testing.assert_allclose(share, want_share, atol=1e-6)
    assert pooled.dtype == share.dtype == np.float32


def test_causal_windows_do_not_look_ahead():
    """A change at step 40 moves no causal value before 40; centred ones (t-5 .. t+4) from 36."""
    base = np.zeros((80, 2))
    later = base.copy()
    later[40:] = 5.0
    m = np.ones(80)
    for alignment, first_moved in (("causal", 40), ("centred", 40 - 4)):
        a, _ = features.speech_pooled(base, m, 10, alignment)
        b, _ = features.speech_pooled(later, m, 10, alignment)
        moved = np.flatnonzero(np.abs(a - b).max(axis=1) > 1e-4)  # past rounding
        assert moved[0] == first_moved


def test_speech_dominates_and_silence_gets_the_plain_average():
    table = np.concatenate([np.full((10, 1), 3.0), np.full((20, 1), -1.0)])
    m = np.concatenate([np.ones(10), np.zeros(20)])
    pooled, share = features.speech_pooled(table, m, 15, "causal")
    # 5 steps of silence after the speech: still nearly the speech's value (the gap is bridged).
    assert pooled[14, 0] == pytest.approx((10 * 1.01 * 3 - 5 * 0.01) / (10 * 1.01 + 5 * 0.01))
    assert share[14] == pytest.approx(10 / 15)
    # A window without speech: the plain average of its steps, share 0.
    assert pooled[29, 0] == pytest.approx(-1.0) and share[29] == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="window_steps"):
        features.speech_pooled(np.zeros((3, 1)), np.zeros(3), 0)
    with pytest.raises(ValueError, match="alignment"):
        features.speech_pooled(np.zeros((3, 1)), np.zeros(3), 2, "ahead")


def _cfg(seconds):
    cfg = config.defaults()
    cfg.features.opensmile_set = "none"
    cfg.features.speech_pooled_seconds = seconds
    return cfg


def test_front_end_appends_pooled_columns_on_the_same_clock():
    """A burst from 2.00 s to 3.00 s: m, and with it the speech share, starts at step 50 (2.00 s)
    and not before; the pooled columns hold the burst's features through the following pause."""
    x = bursts([(2.0, 3.0)], 8.0)
    plain = frontend.extract((x, RATE), None, _cfg(0.0))
    out = frontend.extract((x, RATE), None, _cfg(2.0))
    names = list(plain["audio_feature_names"])
    width = len(names)
    assert list(out["audio_feature_names"]) == [
        *names,
        *(f"{n}_speech2s" for n in names),
        "speech_share_2s",
    ]
    np.testing.assert_array_equal(out["audio_features"][:, :width], plain["audio_features"])
    share = out["audio_features"][:, -1]
    m = out["speech_energy"]
    assert m[:49].max() == 0.0 and m[50] > 0.0
    assert share[:49].max() == 0.0 and share[50] > 0.0
    # 1.5 s after the burst (step 112): a 2 s causal window still holds 0.5 s of it, whose
    # weight dominates the silence's floor: the pooled energy is near the burst's, far above
    # the pause's own.
    energy = names.index("energy_db_mean")
    pooled_energy = out["audio_features"][:, width + energy]
    burst_level = plain["audio_features"][60:70, energy].mean()
    pause_level = plain["audio_features"][190:, energy].mean()
    assert abs(pooled_energy[112] - burst_level) < 0.2 * abs(burst_level - pause_level)
    # 2.5 s after: the window is all pause.
    assert abs(pooled_energy[190] - pause_level) < 0.05 * abs(burst_level - pause_level)


def test_chunked_extraction_with_pooling_equals_the_whole_file():
    """The margin grows to the pooling's reach, so chunk borders change nothing."""
    cfg = _cfg(4.0)
    rng = np.random.default_rng(0)
    t = np.arange(41 * RATE) / RATE
    speech = 0.1 * np.sin(2 * np.pi * 200 * t) * (np.sin(2 * np.pi * 0.3 * t) > 0)
    x = (speech + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    whole = frontend.extract((x, RATE), None, cfg)
    chunked = frontend.extract_long((x, RATE), None, cfg, chunk_seconds=10, margin_seconds=2)
    np.testing.assert_allclose(chunked["audio_features"], whole["audio_features"], atol=1e-4)


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("audio.features.speech_pooled_seconds", -1.0, "speech_pooled_seconds must be >= 0"),
        ("audio.features.speech_pooled_alignment", "ahead", "speech_pooled_alignment"),
    ],
)
def test_config_keys_are_validated(key, value, needle):
    cfg = config_lib.base_config()
    cfg.update_from_flattened_dict({key: value})
    with pytest.raises(config_lib.ConfigError, match=needle):
        config_lib.validate(cfg)
