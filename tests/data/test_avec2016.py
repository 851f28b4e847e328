"""The AVEC2016 reader and validator: a hand-made copy of the official layout, and broken ones."""

import pathlib
import shutil

import cv2
import numpy as np
import pytest
import soundfile

from avemo.data.corpora import avec2016, validate
from avemo.data.corpora.base import CorpusError

SECONDS = 2.0
ROWS = int(SECONDS / 0.04) + 1  # 51, as 7501 for 300 s.


def official_arff(name: str, values: np.ndarray) -> str:
    """Text exactly like the release's gold-standard files."""
    rows = "".join(f"{name},{k * 0.04:.6f},{v:.6f}\n" for k, v in enumerate(values))
    return (
        "@relation GOLDSTANDARD\n\n"
        "@attribute Instance_name string\n"
        "@attribute frameTime numeric\n"
        "@attribute GoldStandard numeric\n\n"
        "@data\n\n" + rows
    )


def make_official_copy(root: pathlib.Path) -> pathlib.Path:
    rng = np.random.default_rng(0)
    for name in ("train_1", "dev_1", "test_1"):
        audio = root / "recordings_audio" / f"{name}.wav"
        audio.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(audio, 0.1 * rng.standard_normal(int(SECONDS * 16000)), 16000, "PCM_16")
        video = root / "recordings_video" / f"{name}.mp4"
        video.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (64, 48))
        for k in range(int(SECONDS * 25)):
            writer.write(np.full((48, 64, 3), 4 * k, np.uint8))
        writer.release()
        times = root / "recordings_video_frame_time" / f"{name}.csv"
        times.parent.mkdir(parents=True, exist_ok=True)
        times.write_text("frame;time\n" + "".join(f"{k};{k * 0.04:.2f}\n" for k in range(50)))
        if name.startswith("test"):
            continue  # Test labels are not public.
        for dimension in ("arousal", "valence"):
            path = root / "ratings_gold_standard" / dimension / f"{name}.arff"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(official_arff(name, np.tanh(rng.standard_normal(ROWS))))
    return root


@pytest.fixture(scope="module")
def official_copy(tmp_path_factory) -> pathlib.Path:
    return make_official_copy(tmp_path_factory.mktemp("avec2016"))


@pytest.fixture
def broken_copy(official_copy, tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(official_copy, tmp_path / "copy"))


def test_reader_accepts_official_layout(official_copy):
    sessions = avec2016.read_sessions(official_copy)
    assert [(s.name, s.split) for s in sessions] == [
        ("train_1", "train"),
        ("dev_1", "dev"),
        ("test_1", "test"),
    ]
    assert sessions[2].label_paths == () and sessions[2].load_labels() is None
    times, values = sessions[1].load_labels()
    assert times.shape == (ROWS,) and values.shape == (ROWS, 2) and values.dtype == np.float32
    text = (official_copy / "ratings_gold_standard/valence/dev_1.arff").read_text()
    assert f"dev_1,0.120000,{values[3, 1]:.6f}" in text.splitlines()
    assert sessions[0].frame_times_path.name == "train_1.csv"


def test_validator_passes_official_layout(official_copy, capsys):
    assert validate.validate_avec2016(official_copy) == []
    assert validate.main(["--corpus", "avec2016", "--root", str(official_copy)]) == 0


def errors_naming(findings, path: pathlib.Path, words: str) -> list:
    return [
        f
        for f in findings
        if f.severity == validate.ERROR and f.path == path and words in f.message
    ]


ARFF_A = "ratings_gold_standard/arousal/train_1.arff"
ARFF_V = "ratings_gold_standard/valence/train_1.arff"


def replace_rows(path: pathlib.Path, edit) -> None:
    lines = path.read_text().splitlines()
    start = lines.index("@data") + 2
    path.write_text("\n".join(lines[:start] + edit(lines[start:])) + "\n")


def break_time_step(rows):
    name, _, value = rows[5].split(",")
    rows[5] = f"{name},0.210000,{value}"
    return rows


def break_order(rows):
    rows[4], rows[5] = rows[5], rows[4]
    return rows


DEFECTS = {
    "missing video": (
        lambda r: (r / "recordings_video/dev_1.mp4").unlink(),
        "recordings_video/dev_1.mp4",
        "missing",
    ),
    "missing audio": (
        lambda r: (r / "recordings_audio/dev_1.wav").unlink(),
        "recordings_audio/dev_1.wav",
        "missing",
    ),
    "missing one dimension": (lambda r: (r / ARFF_V).unlink(), ARFF_V, "missing"),
    "rows differ between dimensions": (
        lambda r: replace_rows(r / ARFF_V, lambda x: x[:-3]),
        ARFF_V,
        "rows but arousal has",
    ),
    "rows differ from audio duration": (
        lambda r: [replace_rows(r / p, lambda x: x[:-10]) for p in (ARFF_A, ARFF_V)],
        ARFF_A,
        "audio needs",
    ),
    "time step": (lambda r: replace_rows(r / ARFF_A, break_time_step), ARFF_A, "time step"),
    "non-monotonic times": (
        lambda r: replace_rows(r / ARFF_A, break_order),
        ARFF_A,
        "not increasing",
    ),
    "NaN value": (
        lambda r: replace_rows(r / ARFF_A, lambda x: x[:7] + ["train_1,0.280000,NaN"] + x[8:]),
        ARFF_A,
        "NaN",
    ),
    "not ARFF": (lambda r: (r / ARFF_A).write_text("time,value\n0,1\n"), ARFF_A, "ARFF"),
    "missing attribute": (
        lambda r: (r / ARFF_A).write_text(
            (r / ARFF_A).read_text().replace("GoldStandard", "Rating")
        ),
        ARFF_A,
        "GoldStandard",
    ),
    "labels without recording": (
        lambda r: shutil.copy(r / ARFF_A, r / "ratings_gold_standard/arousal/train_2.arff"),
        "ratings_gold_standard/arousal/train_2.arff",
        "no recording",
    ),
    "unreadable video": (
        lambda r: (r / "recordings_video/dev_1.mp4").write_bytes(b"\0" * 100),
        "recordings_video/dev_1.mp4",
        "OpenCV",
    ),
    "unreadable audio": (
        lambda r: (r / "recordings_audio/dev_1.wav").write_bytes(b"RIFF0000"),
        "recordings_audio/dev_1.wav",
        "soundfile",
    ),
    "frame times out of order": (
        lambda r: (r / "recordings_video_frame_time/dev_1.csv").write_text(
            "frame;time\n0;0.00\n1;0.08\n2;0.04\n"
        ),
        "recordings_video_frame_time/dev_1.csv",
        "not increasing",
    ),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_validator_reports_defect(broken_copy, defect, capsys):
    damage, relative, words = DEFECTS[defect]
    damage(broken_copy)
    findings = validate.validate_avec2016(broken_copy)
    assert errors_naming(findings, broken_copy / relative, words), [str(f) for f in findings]
    assert validate.main(["--root", str(broken_copy)]) == 1
    assert relative in capsys.readouterr().out


def test_trailing_space_in_attribute_name_is_a_warning(broken_copy):
    path = broken_copy / ARFF_A
    path.write_text(path.read_text().replace("@attribute frameTime", "@attribute 'frameTime '"))
    findings = validate.validate_avec2016(broken_copy)
    assert [f.severity for f in findings] == [validate.WARNING]
    assert findings[0].path == path and "frameTime " in findings[0].message
    session = next(s for s in avec2016.read_sessions(broken_copy) if s.name == "train_1")
    assert session.load_labels().values.shape == (ROWS, 2)


def test_reader_names_missing_files(broken_copy):
    (broken_copy / ARFF_V).unlink()
    with pytest.raises(CorpusError, match="valence/train_1.arff"):
        avec2016.read_sessions(broken_copy)


def test_loading_malformed_labels_names_the_file(broken_copy):
    replace_rows(broken_copy / ARFF_A, break_time_step)
    session = next(s for s in avec2016.read_sessions(broken_copy) if s.name == "train_1")
    with pytest.raises(CorpusError, match="arousal/train_1.arff.*time step"):
        session.load_labels()
