"""Training loop: SIGTERM saves, exits 0, and the rerun resumes to the uninterrupted result.

(Its own file, so that the test runner's workers can run it beside test_train.py.)
"""

import subprocess

import numpy as np

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
