"""Folders: resume after an interruption (never partial outputs), one error line per unusable
file while the others complete, progress lines, summary.csv and the contact sheet."""

import csv
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from avemo import predict
from avemo import predict_frontends as frontends
from tests.audio.audio_signals import speech_like
from tests.media import Media, write_av
from tests.trained_model import trained_workdir
from tests.video.generated_videos import face_patch

NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    if os.environ.get("AVEMO_TEST_WORKDIR"):  # a trained tiny workdir, to iterate quickly
        return os.environ["AVEMO_TEST_WORKDIR"]
    return str(trained_workdir(tmp_path_factory)[0])


def clip(path, seconds=3.0):
    audio = speech_like(seconds, 48000, seed=1)[:, None]
    return write_av(path, Media(seconds=seconds, width=160, height=120, face=face_patch(100),
                                audio=audio))  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("videos")
    for name in NAMES:
        clip(root / f"{name}.mp4")
    return root


def outputs_of(out: pathlib.Path, name: str) -> list[bool]:
    return [p.is_file() for p in predict.output_paths(out, name).values()]


def no_leftovers(out: pathlib.Path) -> bool:
    return not [p for p in out.iterdir() if p.name.startswith(".")]


def test_interrupted_folder_resumes_only_the_missing_videos(workdir, folder, tmp_path, monkeypatch,
                                                            capsys):  # fmt: skip
    out = tmp_path / "out"
    real = frontends.audio_task

    def interrupted(job, report=None):
        if job.name == "b":
            raise KeyboardInterrupt  # Ctrl-C while the second video is on its way
        return real(job, report)

    monkeypatch.setattr(frontends, "audio_task", interrupted)
    args = ["--workdir", workdir, str(folder), "--out", str(out), "--jobs", "0"]
    assert predict.main(args) == 130
    assert all(outputs_of(out, "a")) and not any(outputs_of(out, "b") + outputs_of(out, "c"))
    assert no_leftovers(out)
    done_at = (out / "a.json").stat().st_mtime_ns
    monkeypatch.setattr(frontends, "audio_task", real)
    capsys.readouterr()
    assert predict.main(args) == 0
    printed = capsys.readouterr().out
    assert "1 of 3 videos already complete" in printed
    assert (out / "a.json").stat().st_mtime_ns == done_at  # not redone
    assert all(all(outputs_of(out, name)) for name in NAMES) and no_leftovers(out)
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["video"] for r in rows] == [str(folder / f"{n}.mp4") for n in NAMES]
    assert list(rows[0]) == list(predict.SUMMARY_COLUMNS)
    assert all(float(r["face_share"]) > 0.9 and float(r["duration_seconds"]) == 3.0 for r in rows)
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"
    # --overwrite redoes complete videos.
    args = ["--workdir", workdir, str(folder / "a.mp4"), "--out", str(out), "--jobs", "0"]
    assert predict.main(args + ["--overwrite"]) == 0
    assert (out / "a.json").stat().st_mtime_ns != done_at


def test_undecodable_inputs_give_one_error_line_each(workdir, tmp_path, capsys):
    root = tmp_path / "mixed"
    root.mkdir()
    clip(root / "good.mp4", 2.0)
    (root / "text.mp4").write_text("not a video\n" * 10)
    (root / "noise.avi").write_bytes(np.random.default_rng(0).bytes(5000))
    out = tmp_path / "out"
    assert predict.main(["--workdir", workdir, str(root), "--out", str(out), "--jobs", "0"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    errors = [e for e in errors if e.startswith("avemo.predict: error:")]
    assert len(errors) == 2
    assert any("noise.avi" in e for e in errors) and any("text.mp4" in e for e in errors)
    assert all(outputs_of(out, "good")) and not any(outputs_of(out, "text"))
    assert len(list(csv.DictReader((out / "summary.csv").open()))) == 1


def test_progress_lines_when_not_on_a_terminal(workdir, tmp_path, capsys):
    video = clip(tmp_path / "long.mp4", 12.0)
    args = ["--workdir", workdir, str(video), "--out", str(tmp_path / "out"), "--jobs", "0",
            "--log-every", "0"]  # fmt: skip
    assert predict.main(args) == 0
    lines = [e for e in capsys.readouterr().err.splitlines() if e.startswith("avemo.predict: long")]
    assert len(lines) >= 2, lines
    assert "/12 s (" in lines[-1] and "ETA" in lines[-1]


@pytest.mark.slow
def test_sigterm_during_a_folder_run_with_workers_leaves_no_partial_outputs(
    workdir, folder, tmp_path
):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "avemo.predict", "--workdir", workdir, str(folder),
               "--out", str(out), "--jobs", "2"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (out / "a.json").exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    if child.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert child.returncode == 130, err.decode()
    assert b"interrupted" in err
    for name in NAMES:
        assert all(outputs_of(out, name)) or not any(outputs_of(out, name)), name
    assert all(outputs_of(out, "a")) and no_leftovers(out)
    # Re-run: only the missing ones.
    done_at = (out / "a.json").stat().st_mtime_ns
    assert predict.main(["--workdir", workdir, str(folder), "--out", str(out), "--jobs", "0"]) == 0
    assert (out / "a.json").stat().st_mtime_ns == done_at
    assert all(all(outputs_of(out, name)) for name in NAMES) and no_leftovers(out)
