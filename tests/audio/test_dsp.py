"""Closed-form checks of the §4.1 DSP (Eq. 1–8) and of the dual-threshold endpoint detection."""

import numpy as np
import pytest

from avemo.audio import config, dsp, features
from tests.audio.audio_signals import RATE, bursts, tone


def test_pre_emphasis_is_the_difference_equation():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    alpha = 0.94
    y = dsp.pre_emphasis(x, alpha)
    expected = [x[0]] + [x[n] - alpha * x[n - 1] for n in range(1, x.size)]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_pre_emphasis_transfer_function_gain():
    # |H(e^{jω})| = |1 - α e^{-jω}| (Eq. 1) for a steady tone.
    alpha, f = 0.94, 2000.0
    x = tone(f, 1.0, amplitude=0.5)
    y = dsp.pre_emphasis(x, alpha)
    gain = np.abs(1 - alpha * np.exp(-2j * np.pi * f / RATE))
    rms = lambda v: np.sqrt(np.mean(np.square(v[8:], dtype=np.float64)))
    assert rms(y) / rms(x) == pytest.approx(gain, rel=1e-3)


@pytest.mark.parametrize("n", [2, 25, 400, 401])
def test_hamming_matches_eq4(n):
    k = np.arange(n)
    closed_form = 0.54 - 0.46 * np.cos(2 * np.pi * k / (n - 1))
    np.testing.assert_allclose(dsp.hamming_window(n), closed_form, atol=1e-7)
    np.testing.assert_array_equal(dsp.window("rectangular", n), np.ones(n))
    with pytest.raises(ValueError):
        dsp.window("hann", n)


def test_frames_are_centred_on_multiples_of_the_hop():
    x = np.arange(1, 1001, dtype=np.float32)
    frames = dsp.frame_signal(x, 400, 160)
    assert frames.shape == (1000 // 160 + 1, 400)
    # Frame 3 is centred on sample 480: it starts at 480 - 200.
    np.testing.assert_array_equal(frames[3], x[280:680])
    # Frame 0 is zero-padded on the left.
    np.testing.assert_array_equal(frames[0, :200], 0)
    np.testing.assert_array_equal(frames[0, 200:], x[:200])


def test_energy_of_a_known_burst_matches_eq5():
    w = dsp.hamming_window(400)
    amplitude = 0.25
    frame = np.full((1, 400), amplitude, np.float32)
    # Constant burst: E = A² Σ h(n) with h = w².
    expected = amplitude**2 * np.sum(w.astype(np.float64) ** 2)
    assert dsp.short_term_energy(frame, w)[0] == pytest.approx(expected, rel=1e-6)
    # Half the frame silent: only the windowed half counts.
    frame[0, :200] = 0
    assert dsp.short_term_energy(frame, w)[0] == pytest.approx(
        amplitude**2 * np.sum(w[200:].astype(np.float64) ** 2), rel=1e-6
    )
    # A full-scale square wave has 0 dB mean power.
    square = np.sign(tone(1000, 0.025, amplitude=1.0) + 1e-9).astype(np.float32)[None, :400]
    assert dsp.energy_db(dsp.short_term_energy(square, w), w)[0] == pytest.approx(0, abs=1e-3)


@pytest.mark.parametrize("frequency", [250.0, 1000.0, 3000.0])
def test_tone_gives_zcr_and_centroid_in_closed_form(frequency):
    cfg = config.defaults()
    analysis = features.analyse_frames(tone(frequency, 1.0), cfg)
    inner = slice(5, -5)  # Frames fully inside the tone.
    # A 25 ms frame (N = 400) holds a whole number of crossings: exact up to ±1 / (N - 1).
    np.testing.assert_allclose(analysis.zcr[inner], 2 * frequency / RATE, atol=1.01 / 399)
    assert np.mean(analysis.zcr[inner]) == pytest.approx(2 * frequency / RATE, rel=0.05)
    np.testing.assert_allclose(analysis.centroid[inner], frequency, rtol=0.05)
    assert np.all(analysis.flux[inner] < 1e-2)


def test_spectral_flux_of_a_frequency_change():
    magnitude = np.zeros((3, 8))
    magnitude[0, 2] = magnitude[1, 2] = 5.0
    magnitude[2, 6] = 1.0
    # Normalised spectra: e2, e2, e6 → flux 0, 0, |e6 - e2|² = 2.
    np.testing.assert_allclose(features.spectral_flux(magnitude), [0, 0, 2])


def test_silence_has_defined_descriptors():
    cfg = config.defaults()
    analysis = features.analyse_frames(np.zeros(RATE, np.float32), cfg)
    for values in (analysis.zcr, analysis.centroid, analysis.flux, analysis.mfcc, analysis.logmel):
        assert np.isfinite(values).all()
    assert not analysis.zcr.any() and not analysis.centroid.any()


def _frame_mask(x):
    cfg = config.defaults()
    analysis = features.analyse_frames(x, cfg)
    return dsp.endpoint_mask(analysis.energy_db, analysis.zcr, cfg.hop_seconds)


def test_endpoints_of_bursts_within_20_ms():
    spans = [(0.50, 1.20), (1.73, 2.41), (3.05, 3.30)]
    mask = _frame_mask(bursts(spans, 4.0))
    found = dsp.segments(mask, 0.01)
    assert len(found) == len(spans), found
    for (start, end), (found_start, found_end) in zip(spans, found):
        assert abs(found_start - start) <= 0.02
        assert abs(found_end - end) <= 0.02


def test_zcr_extends_speech_into_an_unvoiced_onset():
    # Frame energies (dB) and ZCRs: noise at -60 dB, a weak fricative (frames 40-49) between the
    # noise and the lower gate but with many crossings, then a vowel (frames 50-89).
    energy = np.full(150, -60.0)
    zcr = np.full(150, 0.05)
    energy[40:50], zcr[40:50] = -55.5, 0.45
    energy[50:90], zcr[50:90] = -30.0, 0.08
    with_zcr = dsp.endpoint_mask(energy, zcr, 0.01)
    without = dsp.endpoint_mask(energy, zcr, 0.01, zcr_extend_seconds=0.0)
    assert dsp.segments(without, 0.01) == [(0.5, 0.89)]
    assert dsp.segments(with_zcr, 0.01) == [(0.4, 0.89)]
    # The extension reaches at most zcr_extend_seconds.
    short = dsp.endpoint_mask(energy, zcr, 0.01, zcr_extend_seconds=0.05)
    assert dsp.segments(short, 0.01) == [(0.45, 0.89)]


def test_silent_file_is_all_silence():
    assert not _frame_mask(np.zeros(2 * RATE)).any()
    assert not _frame_mask(1e-4 * np.random.default_rng(0).standard_normal(2 * RATE)).any()
    assert dsp.pause_fraction(np.zeros(10, bool)) == 1.0
    assert dsp.pause_fraction(np.zeros(0, bool)) == 1.0


def test_speech_energy_thresholds():
    m = dsp.speech_energy(np.array([-120.0, -60.0, -50.0, -30.0, -10.0, 0.0]), -50.0, -10.0)
    np.testing.assert_allclose(m, [0, 0, 0, 0.5, 1, 1])
    with pytest.raises(ValueError):
        dsp.speech_energy(np.zeros(3), -10.0, -50.0)


def test_speech_energy_relative_to_the_session_level():
    """session_relative_db: the range sits below the session's 95th-percentile power."""
    power = np.concatenate([np.full(90, -60.0), np.full(5, -45.0), np.full(5, -20.0)])
    m = dsp.speech_energy(power, -50.0, -10.0, session_relative_db=18.0)
    # Closed form: R = the 95th percentile, threshold max(-50, R - 18), full R.
    reference = np.percentile(power, 95)
    threshold = max(-50.0, reference - 18.0)
    expected = np.clip((power - threshold) / (reference - threshold), 0, 1)
    np.testing.assert_allclose(m, expected, atol=1e-6)
    # A quiet distant talker 25 dB under a loud subject gets m = 0; the fixed range does not.
    loud = np.concatenate([np.full(50, -20.0), np.full(50, -45.0)])
    assert dsp.speech_energy(loud, session_relative_db=18.0)[50:].max() == 0.0
    assert dsp.speech_energy(loud)[50:].min() > 0.0
    # Digital silence stays 0 (the absolute threshold still applies).
    assert dsp.speech_energy(np.full(10, -120.0), session_relative_db=18.0).max() == 0.0
