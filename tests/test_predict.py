"""Prediction on new recordings: another fps/resolution/sample rate, CSV/ARFF/PNG, errors."""

import csv
import io

import cv2
import numpy as np
import pytest
import soundfile
import soxr

from avemo import evaluate, inference, postprocess, predict, train
from avemo.audio import frontend
from avemo.data.corpora import arff_io, get_sessions
from avemo.video import frontend as video_frontend
from tests.trained_model import trained_workdir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_workdir(tmp_path_factory)


@pytest.fixture(scope="module")
def model(trained):
    return inference.load(str(trained[0]))


@pytest.fixture(scope="module")
def dev_session(trained):
    return next(s for s in get_sessions(trained[1].data) if s.split == "dev")


@pytest.fixture(scope="module")
def new_recording(dev_session, tmp_path_factory):
    """The dev session re-encoded: 30 fps 480x360 mp4 and a 44.1 kHz stereo wav."""
    out = tmp_path_factory.mktemp("new_recording")
    capture = cv2.VideoCapture(str(dev_session.video_path))
    source_fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    duration = len(frames) / source_fps
    video = out / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (480, 360))
    for i in range(int(round(duration * 30))):
        source = frames[min(int(i / 30 * source_fps), len(frames) - 1)]
        writer.write(cv2.resize(source, (480, 360), interpolation=cv2.INTER_LINEAR))
    writer.release()
    mono, rate = soundfile.read(dev_session.audio_path, dtype="float32")
    resampled = soxr.resample(mono, rate, 44100)
    audio = out / "clip.wav"
    soundfile.write(audio, np.stack([resampled, 0.8 * resampled], axis=1), 44100)
    return video, audio, duration


def test_new_recording_one_row_per_step_with_flags_and_arff(
    model, trained, dev_session, new_recording, tmp_path
):
    video, audio, duration = new_recording
    out = tmp_path / "out"
    assert predict.main(["--workdir", str(trained[0]), str(video), "--audio", str(audio),
                         "--out", str(out)]) == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [
        "clip.csv", "clip.json", "clip.png", "clip_arousal.arff", "clip_valence.arff",
        "summary.csv", "summary.png",
    ]  # fmt: skip
    rows = list(csv.DictReader((out / "clip.csv").open()))
    steps = int(np.floor(duration / 0.04 + 1e-9)) + 1
    assert len(rows) == steps
    assert list(rows[0]) == list(predict.CSV_COLUMNS)
    times = np.array([float(r["time"]) for r in rows])
    np.testing.assert_allclose(times, np.arange(steps) * 0.04, atol=1e-9)
    faces = np.array([float(r["face_present"]) for r in rows])
    speech = np.array([float(r["speech_energy"]) for r in rows])
    gate = np.array([float(r["audio_gate"]) for r in rows])
    assert set(np.unique(faces)) <= {0.0, 1.0}
    assert np.all((gate >= 0) & (gate <= 1)) and np.all((speech >= 0) & (speech <= 1))
    # The flags follow the content, whatever the encoding: compare with the original session.
    original_faces = video_frontend.extract(dev_session.video_path, steps, trained[1].video)
    assert np.mean(faces == original_faces["face_present"]) > 0.9
    original_speech = frontend.extract(dev_session.audio_path, steps, trained[1].audio)
    assert np.corrcoef(speech, original_speech["speech_energy"])[0, 1] > 0.9
    # The ARFF pair re-reads through the AVEC reader with the CSV's values.
    labels = arff_io.read_label_pair(out / "clip_arousal.arff", out / "clip_valence.arff")
    assert labels.values.shape == (steps, 2)
    csv_values = np.array([[float(r["arousal"]), float(r["valence"])] for r in rows])
    np.testing.assert_allclose(labels.values, csv_values, atol=2e-6)
    gold = arff_io.read_gold_standard(out / "clip_arousal.arff")
    assert set(gold.instance_names) == {"clip"} and not gold.warnings
    assert (out / "clip.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_applies_the_post_processing_evaluate_fitted(model, trained, dev_session):
    workdir, config = trained
    evaluate.evaluate_workdir(str(workdir), protocols=("normal",), plots=False)
    params = postprocess.load(workdir)
    assert params is not None and params["fitted_on"] == [dev_session.name]
    # Predict path: the raw recording files, no labels, no cache.
    via_predict = predict.predict_recording(
        model, dev_session.video_path, dev_session.audio_path, params
    )
    # Evaluate path: the cached, prepared dev session.
    prepared = next(s for s in train.load_sessions(config, str(workdir)) if s.split == "dev")
    raw = model.predict([prepared])[dev_session.name]
    assert via_predict["outputs"].shape == raw["outputs"].shape
    np.testing.assert_allclose(via_predict["raw_outputs"], raw["outputs"], atol=1e-5)
    np.testing.assert_allclose(
        via_predict["outputs"], postprocess.apply(raw["outputs"], params), atol=1e-5
    )
    rows = list(csv.DictReader((workdir / "reports" / "metrics.csv").open()))
    row = next(r for r in rows if (r["stage"], r["session"]) == ("postprocessed", "dev_1"))
    from avemo.metrics import ccc

    gold = prepared.arrays["labels"]
    assert ccc(via_predict["outputs"][:, 1], gold[:, 1]) == pytest.approx(
        float(row["ccc_valence"]), abs=1e-5
    )


def test_unreadable_video_is_one_clear_error_and_writes_nothing(trained, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_text("not a video")
    out = tmp_path / "out"
    assert predict.main(["--workdir", str(trained[0]), str(bad), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.mp4" in err[0] and err[0].startswith("avemo.predict: error:")
    assert not out.exists() or not any(out.iterdir())


def test_missing_input_and_folder_listing(tmp_path):
    with pytest.raises(predict.PredictError, match="no such file"):
        predict.find_videos([tmp_path / "nope.mp4"])
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "b.avi").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in predict.find_videos([tmp_path])] == ["a.mp4", "b.avi"]
    with pytest.raises(predict.PredictError, match="same name"):
        predict.find_videos([tmp_path, tmp_path / "a.mp4"])


def test_csv_has_each_dimensions_gate_when_the_model_has_them():
    """model.gate_per_output: audio_gate_arousal / audio_gate_valence carry the two gates (and
    audio_gate their mean); a one-gate model leaves the two columns empty."""
    steps = 4
    gates = np.array([[0.1, 0.3], [0.2, 0.4], [0.5, 0.5], [0.9, 0.7]], np.float32)
    prediction = {
        "time": np.arange(steps) * 0.04,
        "outputs": np.zeros((steps, 2), np.float32),
        "audio_gate": gates.mean(1),
        "audio_gates": gates,
        "face_present": np.ones(steps, np.float32),
        "speech_energy": np.zeros(steps, np.float32),
    }
    rows = list(csv.DictReader(io.StringIO(predict.csv_text(prediction))))
    assert list(rows[0]) == list(predict.CSV_COLUMNS)
    np.testing.assert_allclose(
        [float(r["audio_gate_arousal"]) for r in rows], gates[:, 0], atol=1e-6
    )
    np.testing.assert_allclose(
        [float(r["audio_gate_valence"]) for r in rows], gates[:, 1], atol=1e-6
    )
    np.testing.assert_allclose([float(r["audio_gate"]) for r in rows], gates.mean(1), atol=1e-6)
    one_gate = dict(prediction, audio_gates=np.full((steps, 2), np.nan, np.float32))
    rows = list(csv.DictReader(io.StringIO(predict.csv_text(one_gate))))
    assert all(r["audio_gate_arousal"] == "" and r["audio_gate_valence"] == "" for r in rows)
    assert all(r["audio_gate"] != "" for r in rows)


def test_predict_replays_the_head_weights_evaluate_fitted(trained, dev_session, tmp_path):
    """A model with modality heads and both head weights on: predict moves its output toward the
    face head by n and toward the voice head by m exactly as evaluate's fit says."""
    config = trained[1].copy_and_resolve_references()
    config.model.modality_heads = True
    config.postprocess.face_weight = True
    config.postprocess.voice_weight = True
    config.postprocess.keep_rule = "in_sample"
    workdir = tmp_path / "heads"
    train.train_and_evaluate(config, str(workdir))
    evaluate.evaluate_workdir(str(workdir), protocols=("normal",), plots=False)
    params = postprocess.load(workdir)
    for dim in ("arousal", "valence"):
        assert list(params["dimensions"][dim])[:2] == ["face_weight", "voice_weight"]
    model = inference.load(str(workdir))
    via_predict = predict.predict_recording(
        model, dev_session.video_path, dev_session.audio_path, params
    )
    prepared = next(s for s in train.load_sessions(config, str(workdir)) if s.split == "dev")
    raw = model.predict([prepared])[dev_session.name]
    face = postprocess.face_of(raw, prepared.arrays["face_present"])
    voice = postprocess.voice_of(raw, prepared.arrays["speech_energy"])
    assert face is not None and voice is not None
    np.testing.assert_allclose(
        via_predict["outputs"], postprocess.apply(raw["outputs"], params, face, voice), atol=1e-5
    )
    # With both weights forced to 1 the outputs depend on the voice's m, so the replay is checked
    # where leaving the voice (or its m) out would show.
    for dim in ("arousal", "valence"):
        for step in ("face_weight", "voice_weight"):
            params["dimensions"][dim][step].update(weight=1.0, applied=True)
    silent = (voice[0], np.zeros_like(voice[1]))
    moved = postprocess.apply(raw["outputs"], params, face, voice)
    assert np.abs(moved - postprocess.apply(raw["outputs"], params, face, silent)).max() > 1e-3
    forced = predict.predict_recording(
        model, dev_session.video_path, dev_session.audio_path, params
    )
    np.testing.assert_allclose(forced["outputs"], moved, atol=1e-5)
