"""Training loop: SIGTERM saves, exits 0, and the rerun resumes to the uninterrupted result.

(Its own file, so that the test runner's workers can run it beside test_train.py.)
"""

import subprocess

import numpy as np

from avemo import inference
from avemo.reporting.writers import read_metrics
from tests.conftest import ROOT
from tests.core.test_train import _cli, _final_params
from tests.processes import sigterm_after_steps

# Every step logged, no evaluation or periodic checkpoint: SIGTERM's own save is the only one.
_STEPWISE = [
    "--config.train.log_every_steps=1",
    "--config.train.eval_every_steps=100000",
    "--config.train.checkpoint_every_steps=100000",
]


def _stop_resume_and_run_straight(tmp_path, total, *overrides):
    """configs/tiny.py with `overrides`, `total` steps: stopped by SIGTERM after step 5 and
    resumed in tmp_path/run, then run straight through in tmp_path/straight; asserts that the
    stop saved and exited 0 and that both end with the same parameters and optimizer state.
    Returns the resumed run's workdir."""
    overrides = [f"--config.train.num_steps={total}", *overrides, *_STEPWISE]
    workdir = tmp_path / "run"
    returncode, output, stopped = sigterm_after_steps(_cli(workdir, *overrides), workdir, 5)
    assert returncode == 0, output
    assert "SIGTERM received" in output
    assert 5 <= stopped < total

    subprocess.run(_cli(workdir, *overrides), cwd=ROOT, check=True, capture_output=True)
    straight = tmp_path / "straight"
    subprocess.run(_cli(straight, *overrides), cwd=ROOT, check=True, capture_output=True)
    config = inference.load_config(str(workdir))
    for a, b in zip(
        _final_params(str(straight), config), _final_params(str(workdir), config), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    return workdir


def test_sigterm_saves_exits_zero_and_resumes_identically(tmp_path):
    _stop_resume_and_run_straight(tmp_path, 400)


def test_a_face_continued_fusion_stopped_by_sigterm_resumes_identically(tmp_path):
    """A fusion after its face stage with train.stage_schedule = "face_continued" (two optimizer
    groups: the face tower on the stage's schedule, the rest on their own) stopped half-way
    resumes to the uninterrupted result, the groups' moments and step counts included, logging
    each step once; the stage is not trained again."""
    total = 200
    workdir = _stop_resume_and_run_straight(
        tmp_path,
        total,
        "--config.train.face_stage_steps=2",
        "--config.train.stage_schedule=face_continued",
        "--config.model.video_lstm_features=16",
        "--config.model.face_lstm_dense_features=16",
        "--config.model.face_context_lstm=True",
        "--config.model.modality_heads=True",
        "--config.model.attention_query=face",
    )
    assert inference.load_config(str(workdir)).train.stage_schedule == "face_continued"
    stage = read_metrics(str(workdir / "face_stage"))
    assert [r["step"] for r in stage if "train/loss" in r] == [1, 2]  # trained once
    logged = [r["step"] for r in read_metrics(str(workdir)) if "train/loss" in r]
    assert logged == list(range(1, total + 1))  # resumed after the stop, not from the start
