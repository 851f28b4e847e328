"""Training loop: SIGTERM saves, exits 0, and the rerun resumes to the uninterrupted result.

(Its own file, so that the test runner's workers can run it beside test_train.py.)
"""

import subprocess

import numpy as np

from avemo.reporting.writers import read_metrics
from configs import tiny
from tests.conftest import ROOT
from tests.core.test_train import _cli, _final_params
from tests.processes import sigterm_after_steps


def test_sigterm_saves_exits_zero_and_resumes_identically(tmp_path):
    total = 400
    overrides = [
        f"--config.train.num_steps={total}",
        "--config.train.log_every_steps=1",
        "--config.train.eval_every_steps=100000",
        "--config.train.checkpoint_every_steps=100000",
    ]
    workdir = tmp_path / "run"
    returncode, output, stopped = sigterm_after_steps(_cli(workdir, *overrides), workdir, 5)
    assert returncode == 0, output
    assert "SIGTERM received" in output
    assert 5 <= stopped < total

    subprocess.run(_cli(workdir, *overrides), cwd=ROOT, check=True, capture_output=True)
    straight = tmp_path / "straight"
    subprocess.run(_cli(straight, *overrides), cwd=ROOT, check=True, capture_output=True)
    config = tiny.get_config()
    for a, b in zip(
        _final_params(str(straight), config), _final_params(str(workdir), config), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_a_face_continued_fusion_stopped_by_sigterm_resumes_identically(tmp_path):
    """A fusion after its face stage with train.stage_schedule = "face_continued" (two optimizer
    groups: the face tower on the stage's schedule, the rest on their own) stopped half-way
    resumes to the uninterrupted result, the groups' moments and step counts included; the
    stage is not trained again."""
    from avemo import inference

    total = 200
    overrides = [
        f"--config.train.num_steps={total}",
        "--config.train.face_stage_steps=2",
        "--config.train.stage_schedule=face_continued",
        "--config.model.video_lstm_features=16",
        "--config.model.face_lstm_dense_features=16",
        "--config.model.face_context_lstm=True",
        "--config.model.modality_heads=True",
        "--config.model.attention_query=face",
        "--config.train.log_every_steps=1",
        "--config.train.eval_every_steps=100000",
        "--config.train.checkpoint_every_steps=100000",
    ]
    workdir = tmp_path / "run"
    returncode, output, stopped = sigterm_after_steps(_cli(workdir, *overrides), workdir, 5)
    assert returncode == 0, output
    assert "SIGTERM received" in output
    assert 5 <= stopped < total
    stage_metrics = (workdir / "face_stage" / "final_metrics.json").stat().st_mtime

    subprocess.run(_cli(workdir, *overrides), cwd=ROOT, check=True, capture_output=True)
    assert (workdir / "face_stage" / "final_metrics.json").stat().st_mtime == stage_metrics
    logged = [r["step"] for r in read_metrics(str(workdir)) if "train/loss" in r]
    assert logged == list(range(1, total + 1))  # resumed after `stopped`, not from the start
    straight = tmp_path / "straight"
    subprocess.run(_cli(straight, *overrides), cwd=ROOT, check=True, capture_output=True)
    config = inference.load_config(str(workdir))
    assert config.train.stage_schedule == "face_continued"
    for a, b in zip(
        _final_params(str(straight), config), _final_params(str(workdir), config), strict=True
    ):
        np.testing.assert_array_equal(a, b)
