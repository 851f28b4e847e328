"""Configuration keys of the audio front end, declared once (composed as `config.audio`).

Every key the audio code reads is declared here with its default; `avemo.config.validate`
rejects unknown keys. The 40 ms label hop itself belongs to `config.data.step_seconds`.
"""

from __future__ import annotations

import ml_collections


def defaults() -> ml_collections.ConfigDict:
    """Returns the audio front-end defaults (the paper's settings where it gives them)."""
    cfg = ml_collections.ConfigDict()

    # Step 1: everything is converted to this rate (mono, 16-bit) before any processing.
    cfg.sample_rate = 16000
    # soxr quality for resampling: "VHQ", "HQ", "MQ", "LQ" or "QQ".
    cfg.resample_quality = "HQ"
    # A file whose share of samples at full scale (|x| >= clip_level) exceeds this is rejected
    # as clipped; a few clipped peaks are normal and accepted.
    cfg.clip_level = 0.999
    cfg.max_clipped_fraction = 0.01

    # Step 2: pre-emphasis coefficient alpha of Eq. (1)-(2), 0.9 <= alpha <= 1.
    cfg.pre_emphasis = 0.94

    # Step 3: short frames shared by energy, ZCR, endpoint detection and the STFT (MFCC,
    # centroid, flux, log-mel). Frames are centred on multiples of the hop (frame j at j * hop).
    cfg.frame_seconds = 0.025
    cfg.hop_seconds = 0.010
    # "hamming" (Eq. 4, the paper's choice) or "rectangular" (Eq. 3).
    cfg.window = "hamming"
    # FFT size of the shared STFT (>= frame length in samples).
    cfg.n_fft = 512

    # Step 4: dual-threshold endpoint detection (energy gates, ZCR extends to unvoiced sounds).
    cfg.endpoint = ml_collections.ConfigDict()
    # The noise floor is this percentile of the frame energies (dB) of the file.
    cfg.endpoint.noise_percentile = 10.0
    # Upper gate: a speech core needs energy above noise floor + high_margin_db ...
    cfg.endpoint.high_margin_db = 15.0
    # ... and above this absolute level (dB re full scale, pre-emphasised signal), so that a
    # silent or near-silent file is all silence.
    cfg.endpoint.min_speech_db = -60.0
    # Lower gate: a core extends to neighbouring frames above noise floor + low_margin_db.
    cfg.endpoint.low_margin_db = 6.0
    # ZCR extension: up to zcr_extend_seconds beyond each segment, frames whose ZCR (crossings per
    # sample) exceeds max(zcr_threshold, noise ZCR mean + 2 std) and whose energy is above the
    # noise floor + 3 dB are speech too (unvoiced consonants).
    cfg.endpoint.zcr_threshold = 0.3
    cfg.endpoint.zcr_extend_seconds = 0.25
    # Segments shorter than this are dropped (clicks), then pauses shorter than this are filled.
    cfg.endpoint.min_speech_seconds = 0.05
    cfg.endpoint.min_pause_seconds = 0.15

    # Speech energy m of Eq. (31): mean power of the (not pre-emphasised) signal over the label
    # step, in dB re full scale, mapped linearly from [threshold_db, full_db] to [0, 1]; below
    # threshold_db it is 0 (distant, quiet speech such as a remote recorder counts as none).
    cfg.speech_energy = ml_collections.ConfigDict()
    cfg.speech_energy.threshold_db = -50.0
    cfg.speech_energy.full_db = -10.0
    # issue 9: > 0 places the range relative to the session's speech level (95th percentile of
    # the step power R): threshold max(threshold_db, R - this), full R, so that a distant second
    # speaker gets m ~ 0 as in the paper (0 = the fixed thresholds above).
    cfg.speech_energy.session_relative_db = 0.0
    # Also set m = 0 where endpoint detection says silence (not in the paper; off by default).
    cfg.speech_energy.gate_with_speech_mask = False

    # Step 5: features on the label grid.
    cfg.features = ml_collections.ConfigDict()
    # openSMILE low-level descriptors: "eGeMAPSv02", "ComParE_2016" or "none".
    cfg.features.opensmile_set = "eGeMAPSv02"
    # MFCC c1..c{n_mfcc} (DCT-II of the log-mel bands of the shared STFT).
    cfg.features.n_mfcc = 13
    # Spectral centroid (Eq. 7) weights: "power" (|X|²) or "magnitude" (|X|, the paper's M).
    # With magnitude, the Hamming side lobes spread over all bins drag a 250 Hz tone's centroid
    # to ~440 Hz; with power it stays within 0.1% (see docs/audio.md).
    cfg.features.centroid_weighting = "power"
    # Statistics window (AVEC2014 / the paper: 3 s long, 1 s shift).
    cfg.features.window_seconds = 3.0
    cfg.features.shift_seconds = 1.0
    # "centred": step t uses the window centred on the shift point nearest t (look-ahead up to
    # window/2 + shift/2); "causal": the latest window ending at or before t (no look-ahead).
    cfg.features.alignment = "centred"
    # issue 9, not in the paper: > 0 appends, for every column above, its average over this many
    # seconds weighted by the speech energy m of Eq. (31) (plus 0.01), and the window's mean m
    # (`features.speech_pooled`): what the subject's own voice said lately, undiluted by pauses,
    # silence and a distant speaker (m ~ 0), carried through the gaps. 0 = off (the paper).
    cfg.features.speech_pooled_seconds = 0.0
    # "causal" (the last seconds: the labels lag the signal) or "centred".
    cfg.features.speech_pooled_alignment = "causal"
    # Beat histogram: RMS-envelope autocorrelation summed in log-spaced bands of beat periods.
    cfg.features.beat_bins = 8
    cfg.features.beat_min_period_seconds = 0.25
    cfg.features.beat_max_period_seconds = 1.5

    # Log-mel spectrogram for the audio CNN (paper §6.2: a frame is 24 x 120, a window of 5
    # frames gives 120 x 120): n_mels bands at hop_seconds; a paper frame is frame_columns
    # consecutive columns; a patch is frames_per_patch such frames (time) x n_mels (frequency).
    cfg.spectrogram = ml_collections.ConfigDict()
    cfg.spectrogram.n_mels = 120
    cfg.spectrogram.frame_columns = 24
    cfg.spectrogram.frames_per_patch = 5
    cfg.spectrogram.fmin = 0.0
    cfg.spectrogram.fmax = 8000.0
    # "centred" on the step or "causal" (ending at the step).
    cfg.spectrogram.alignment = "centred"
    # Beyond the session borders: "silence" (the log floor) or "edge" (repeat the border column).
    cfg.spectrogram.pad_mode = "silence"
    return cfg
