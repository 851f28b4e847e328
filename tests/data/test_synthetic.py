"""The embedded corpus generator: layout, determinism, readability, designed properties."""

import cv2
import numpy as np
import pytest
import soundfile

from avemo.data.corpora import avec2016, synthetic

TINY = synthetic.SyntheticOptions(
    seed=0, train_sessions=1, dev_sessions=1, test_sessions=1, seconds=8.0
)

CASCADE = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"


def decode(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return np.stack(frames)


def truth_path(root, name):
    """ground_truth/<name>.npz; the test split's sits in the hidden folder."""
    folder = root / synthetic.HIDDEN_DIR if name.startswith("test") else root
    return folder / "ground_truth" / f"{name}.npz"


def test_layout_and_test_split_without_labels(tiny_corpus):
    for name in ("train_1", "dev_1", "test_1"):
        assert (tiny_corpus / "recordings_audio" / f"{name}.wav").is_file()
        assert (tiny_corpus / "recordings_video" / f"{name}.mp4").is_file()
        assert (tiny_corpus / "recordings_video_frame_time" / f"{name}.csv").is_file()
        assert truth_path(tiny_corpus, name).is_file()
    for dimension in ("arousal", "valence"):
        assert (tiny_corpus / "ratings_gold_standard" / dimension / "dev_1.arff").is_file()
        assert not (tiny_corpus / "ratings_gold_standard" / dimension / "test_1.arff").exists()
        # The test gold standard exists, apart from the release layout (hidden from training).
        assert (tiny_corpus / synthetic.HIDDEN_DIR / dimension / "test_1.arff").is_file()
    assert not (tiny_corpus / "ground_truth" / "test_1.npz").exists()
    hidden = synthetic.hidden_test_labels(tiny_corpus, "test_1")
    truth = np.load(truth_path(tiny_corpus, "test_1"))
    np.testing.assert_allclose(hidden.values[:, 1], truth["gold_valence"], atol=1e-5)
    assert synthetic.hidden_test_labels(tiny_corpus, "dev_1") is None
    assert not list(tiny_corpus.rglob(".*tmp*")), "temporary files left behind"


def test_same_seed_same_bytes_and_frames(tiny_corpus, tmp_path):
    synthetic.generate_session(tmp_path, "dev_1", "dev", 1, TINY)
    for relative in (
        "ratings_gold_standard/arousal/dev_1.arff",
        "ratings_gold_standard/valence/dev_1.arff",
        "recordings_audio/dev_1.wav",
        "recordings_video_frame_time/dev_1.csv",
    ):
        assert (tmp_path / relative).read_bytes() == (tiny_corpus / relative).read_bytes()
    again = decode(tmp_path / "recordings_video/dev_1.mp4")
    first = decode(tiny_corpus / "recordings_video/dev_1.mp4")
    np.testing.assert_array_equal(again, first)


def test_other_seed_other_labels(tiny_corpus, tmp_path):
    other = synthetic.SyntheticOptions(**{**TINY.__dict__, "seed": 1})
    synthetic.generate_session(tmp_path, "dev_1", "dev", 1, other)
    relative = "ratings_gold_standard/arousal/dev_1.arff"
    assert (tmp_path / relative).read_bytes() != (tiny_corpus / relative).read_bytes()


def test_mp4_read_by_opencv(tiny_corpus):
    frames = decode(tiny_corpus / "recordings_video/train_1.mp4")
    assert frames.shape == (int(TINY.seconds * TINY.fps), TINY.frame_height, TINY.frame_width, 3)
    assert frames.std() > 10  # A picture, not a blank.


def test_wav_read_by_soundfile(tiny_corpus):
    info = soundfile.info(str(tiny_corpus / "recordings_audio/train_1.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert info.frames == int(TINY.seconds * 16000)


def test_wav_read_by_audio_front_end(tiny_corpus):
    frontend = pytest.importorskip("avemo.audio.frontend")
    from avemo.audio import config as audio_config

    num_steps = int(TINY.seconds / 0.04) + 1
    result = frontend.extract(
        str(tiny_corpus / "recordings_audio/train_1.wav"), num_steps, audio_config.defaults()
    )
    assert result["audio_features"].shape[0] == num_steps
    truth = np.load(tiny_corpus / "ground_truth/train_1.npz")
    energy = result["speech_energy"]
    assert energy[truth["speech_active"]].mean() > energy[~truth["speech_active"]].mean()


def test_arff_read_by_avec_reader(tiny_corpus):
    sessions = {s.name: s for s in avec2016.read_sessions(tiny_corpus)}
    assert [s.split for s in sessions.values()] == ["train", "dev", "test"]
    assert sessions["test_1"].load_labels() is None
    times, values = sessions["dev_1"].load_labels()
    truth = np.load(tiny_corpus / "ground_truth/dev_1.npz")
    assert times.shape == (int(TINY.seconds / 0.04) + 1,)
    np.testing.assert_allclose(np.diff(times), 0.04)
    np.testing.assert_allclose(values[:, 0], truth["gold_arousal"], atol=1e-6)
    np.testing.assert_allclose(values[:, 1], truth["gold_valence"], atol=1e-6)


def test_haar_detector_agrees_with_ground_truth(tiny_corpus):
    """The paper's detector finds the face exactly when the generator put one in view."""
    detector = cv2.CascadeClassifier(CASCADE)
    agreements = []
    for name in ("train_1", "dev_1", "test_1"):
        frames = decode(tiny_corpus / f"recordings_video/{name}.mp4")
        face_present = np.load(truth_path(tiny_corpus, name))["face_present"]
        assert 0.05 < 1 - face_present.mean() < 0.3  # The no-face hard case is there.
        for k, frame in enumerate(frames):
            gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            found = len(detector.detectMultiScale(gray, 1.1, 5, minSize=(30, 30))) > 0
            agreements.append(found == bool(face_present[k]))
    assert np.mean(agreements) >= 0.95


def test_oracle_ccc_below_one_above_point_eight():
    rng = np.random.default_rng(123)
    latents, golds = [], []
    for _ in range(8):
        latent = synthetic.latent_trajectory(rng, 1501)
        latents.append(latent)
        golds.append(synthetic.rate(rng, latent, 6).mean(axis=0))
    oracle = synthetic.ccc(np.concatenate(latents), np.concatenate(golds))
    assert 0.8 < oracle < 0.99


def test_generated_gold_is_not_the_latent(tiny_corpus):
    truth = np.load(tiny_corpus / "ground_truth/train_1.npz")
    assert synthetic.ccc(truth["arousal"], truth["gold_arousal"]) < 0.999
    assert np.all(np.abs(truth["arousal"]) < 1) and np.all(np.abs(truth["valence"]) < 1)


def test_hard_cases_take_a_share_each():
    rng = np.random.default_rng(0)
    segment = synthetic.hard_case_schedule(rng, 7501)
    shares = np.bincount(segment, minlength=4) / segment.size
    assert np.all((shares[1:] > 0.08) & (shares[1:] < 0.22)), shares


def test_silence_and_distant_speaker_are_quiet(tiny_corpus):
    energies, speaking, silent, other = [], [], [], []
    for name in ("train_1", "dev_1", "test_1"):
        audio, rate = soundfile.read(str(tiny_corpus / f"recordings_audio/{name}.wav"))
        truth = np.load(truth_path(tiny_corpus, name))
        step = int(0.04 * rate)
        num = len(truth["segment"]) - 1
        energies.append([np.mean(audio[k * step : (k + 1) * step] ** 2) for k in range(num)])
        segment = truth["segment"][:num]
        speaking.append(truth["speech_active"][:num] & (segment == synthetic.NORMAL))
        # Inside silence spans (one step from their edges, where the 40 ms gate ramps).
        inside = segment == synthetic.SILENCE
        inside = inside & np.roll(inside, 1) & np.roll(inside, -1)
        assert not truth["speech_active"][:num][inside].any()
        silent.append(inside)
        other.append(truth["other_speaker_active"][:num])
    energy = np.concatenate(energies)
    speaking, silent, other = (np.concatenate(m) for m in (speaking, silent, other))
    assert silent.sum() > 10 and other.sum() > 10
    assert energy[silent].mean() < 0.01 * energy[speaking].mean()
    assert energy[silent].mean() < energy[other].mean() < 0.3 * energy[speaking].mean()


def _autocorrelation_pitch(frame: np.ndarray, rate: int) -> float:
    frame = frame - frame.mean()
    correlation = np.correlate(frame, frame, "full")[frame.size - 1 :]
    low, high = rate // 500, rate // 70
    return rate / (low + int(np.argmax(correlation[low:high])))


def test_voice_pitch_and_loudness_follow_arousal():
    rate = 16000
    arousal = np.linspace(-0.9, 0.9, 10 * rate)
    voice, envelope = synthetic.synthesize_voice(
        np.random.default_rng(0),
        arousal,
        np.zeros_like(arousal),
        np.ones_like(arousal),
        rate,
        200.0,
    )
    frame = int(0.04 * rate)
    pitches, levels, levels_arousal = [], [], []
    for start in range(0, voice.size - frame, frame):
        if envelope[start : start + frame].min() > 0.3:  # Inside a vowel nucleus.
            pitches.append(_autocorrelation_pitch(voice[start : start + frame], rate))
            levels.append(np.log(np.mean(voice[start : start + frame] ** 2)))
            levels_arousal.append(arousal[start])
    pitches, levels, levels_arousal = map(np.array, (pitches, levels, levels_arousal))
    low, high = levels_arousal < -0.3, levels_arousal > 0.3
    # Designed: +4 semitones per unit arousal (plus a wider range) and +7 dB per unit arousal.
    assert np.median(pitches[high]) / np.median(pitches[low]) > 1.25
    assert 10 * np.log10(np.e) * (np.mean(levels[high]) - np.mean(levels[low])) > 6.0


def test_hard_variant_voice_carries_no_valence_at_zero():
    """`voice_valence` scales the voice's valence cues; 0 removes them (arousal cues stay)."""
    rate = 8000
    n = rate // 2
    arousal, active = np.full(n, 0.3), np.ones(n)

    def voice(valence, strength, arousal=arousal):
        rng = np.random.default_rng(7)
        return synthetic.synthesize_voice(
            rng, arousal, np.full(n, valence), active, rate, 200.0, voice_valence=strength
        )[0]

    np.testing.assert_allclose(voice(0.8, 0.0), voice(-0.8, 0.0), atol=1e-9)
    assert not np.allclose(voice(0.8, 1.0), voice(-0.8, 1.0))
    assert not np.allclose(voice(0.8, 0.0), voice(0.8, 0.0, np.full(n, -0.5)))


def test_test_sessions_can_be_longer(tmp_path):
    options = synthetic.SyntheticOptions(
        train_sessions=0, dev_sessions=0, test_sessions=1, seconds=2.0, test_seconds=3.0
    )
    synthetic.generate(tmp_path, options, workers=1, progress=False)
    labels = synthetic.hidden_test_labels(tmp_path, "test_1")
    assert labels.values.shape[0] == int(round(3.0 / 0.04)) + 1
