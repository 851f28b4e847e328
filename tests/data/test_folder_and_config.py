"""Users' own folder layout, the data config, ``get_sessions`` dispatch and ARFF round trips."""

import pathlib

import cv2
import numpy as np
import pytest
import soundfile

from avemo.data import config as data_config
from avemo.data.corpora import CorpusError, arff_io, get_sessions, synthetic, validate


def write_video(path: pathlib.Path, fourcc: str, frames: int = 50) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25.0, (64, 48))
    for k in range(frames):
        writer.write(np.full((48, 64, 3), 3 * k, np.uint8))
    writer.release()


@pytest.fixture
def user_folder(tmp_path) -> pathlib.Path:
    write_video(tmp_path / "videos/interview.mp4", "mp4v")
    write_video(tmp_path / "videos/meeting.avi", "MJPG")
    write_video(tmp_path / "videos/new_clip.mp4", "mp4v")
    (tmp_path / "audio").mkdir()
    soundfile.write(tmp_path / "audio/interview.wav", np.zeros(32000), 16000)
    (tmp_path / "labels").mkdir()
    grid = "".join(f"{k * 0.04:.2f},{k / 50:.3f},{-k / 50:.3f}\n" for k in range(51))
    (tmp_path / "labels/interview.csv").write_text("time,arousal,valence\n" + grid)
    # Off the grid (every 100 ms, columns in another order): interpolated onto it.
    coarse = "".join(f"{-k / 20:.3f},{k * 0.1:.1f},{k / 20:.3f}\n" for k in range(21))
    (tmp_path / "labels/meeting.csv").write_text("valence, time ,arousal\n" + coarse)
    return tmp_path


def folder_config(root: pathlib.Path, dev_fraction: float = 0.0):
    cfg = data_config.defaults()
    cfg.corpus, cfg.root, cfg.folder.dev_fraction = "folder", str(root), dev_fraction
    return cfg


def test_folder_sessions_and_labels(user_folder):
    sessions = {s.name: s for s in get_sessions(folder_config(user_folder))}
    assert {n: s.split for n, s in sessions.items()} == {
        "interview": "train",
        "meeting": "train",
        "new_clip": "test",
    }
    assert sessions["interview"].audio_path == user_folder / "audio/interview.wav"
    assert sessions["meeting"].audio_path is None  # The video's own track.
    times, values = sessions["interview"].load_labels()
    np.testing.assert_allclose(values[:, 0], np.arange(51) / 50, atol=1e-6)
    times, values = sessions["meeting"].load_labels()
    assert times.size == 51 and np.allclose(np.diff(times), 0.04)
    np.testing.assert_allclose(values[:, 0], times / 2, atol=1e-5)  # arousal = time / 2
    np.testing.assert_allclose(values[:, 1], -times / 2, atol=1e-5)
    assert sessions["new_clip"].load_labels() is None


def test_folder_splits_file_and_dev_fraction(user_folder):
    (user_folder / "splits.csv").write_text("session,split\nmeeting,dev\n")
    splits = {s.name: s.split for s in get_sessions(folder_config(user_folder))}
    assert splits == {"interview": "train", "meeting": "dev", "new_clip": "test"}
    (user_folder / "splits.csv").unlink()
    splits = {s.name: s.split for s in get_sessions(folder_config(user_folder, 1.0))}
    assert splits == {"interview": "dev", "meeting": "dev", "new_clip": "test"}


@pytest.mark.parametrize(
    "relative, text, words",
    [
        ("labels/interview.csv", "t,a,v\n0,0,0\n", "header"),
        ("labels/interview.csv", "time,arousal,valence\n0,0,0\n0.04,x,0\n", "line 3"),
        ("labels/interview.csv", "time,arousal,valence\n0,0,0\n0.04,nan,0\n", "NaN"),
        ("splits.csv", "session,split\ninterview,holdout\n", "split"),
        ("splits.csv", "session,split\nnobody,train\n", "without a video"),
    ],
)
def test_folder_defects_name_the_file(user_folder, relative, text, words):
    (user_folder / relative).write_text(text)
    with pytest.raises(CorpusError, match=words) as raised:
        for session in get_sessions(folder_config(user_folder)):
            session.load_labels()
    assert relative in str(raised.value)
    findings = validate.validate_folder(user_folder)
    assert any(f.severity == validate.ERROR and relative in str(f) for f in findings)


def test_folder_validator_warns_off_grid(user_folder):
    findings = validate.validate_folder(user_folder)
    assert [f.severity for f in findings] == [validate.WARNING]
    assert findings[0].path.name == "meeting.csv"


def test_config_declares_synthetic_options():
    cfg = data_config.defaults()
    assert cfg.corpus == "synthetic" and cfg.step_seconds == 0.04
    options = synthetic.SyntheticOptions.from_config(cfg.synthetic)
    assert options == synthetic.SyntheticOptions.of_size("default")


def test_get_sessions_synthetic_reuses_a_generated_corpus(tiny_corpus, tiny_options):
    cfg = data_config.defaults()
    cfg.root = str(tiny_corpus)
    for key in ("train_sessions", "dev_sessions", "test_sessions", "seconds", "seed"):
        cfg.synthetic[key] = getattr(tiny_options, key)
    before = (tiny_corpus / "corpus.json").stat().st_mtime_ns
    sessions = get_sessions(cfg)
    assert [s.name for s in sessions] == ["train_1", "dev_1", "test_1"]
    assert (tiny_corpus / "corpus.json").stat().st_mtime_ns == before  # Not regenerated.


def test_get_sessions_rejects_bad_config():
    cfg = data_config.defaults()
    cfg.corpus = "recola"
    with pytest.raises(ValueError, match="recola"):
        get_sessions(cfg)
    cfg.corpus = "avec2016"
    with pytest.raises(CorpusError, match="root"):
        get_sessions(cfg)


def test_arff_round_trip_is_atomic(tmp_path):
    values = np.array([0.1234567, -0.5, 0.0])
    path = tmp_path / "gold/dev_1.arff"
    arff_io.write_gold_standard(path, "dev_1", np.arange(3) * 0.04, values)
    gold = arff_io.read_gold_standard(path)
    assert gold.instance_names == ("dev_1",) * 3 and gold.warnings == ()
    np.testing.assert_allclose(gold.values, np.round(values, 6))
    assert [p.name for p in path.parent.iterdir()] == ["dev_1.arff"]
