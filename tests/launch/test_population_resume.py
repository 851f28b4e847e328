"""Population training: a SIGTERM'd population saves and resumes to the uninterrupted result.

(Its own file, so that the test runner's workers can run it beside test_population.py.)
"""

import subprocess
import sys

import numpy as np
import pytest

from avemo import population
from avemo.reporting.writers import read_metrics
from launch import sweep as sweep_lib
from tests.conftest import ROOT
from tests.launch.test_population import CONFIG, DROP, _member_params
from tests.processes import sigterm_after_steps


def _sweep_cli(root, arg=""):
    return [
        sys.executable,
        "-m",
        "launch.sweep",
        "--config",
        CONFIG + arg,
        "--workdir",
        str(root),
        "--executor",
        "population",
    ]


@pytest.mark.slow
def test_population_sigterm_saves_and_resumes_to_the_uninterrupted_result(tmp_path):
    root = tmp_path / "sweep"
    first = root / sweep_lib.expand(CONFIG + ":long", str(root))[0].name
    returncode, output, stopped = sigterm_after_steps(_sweep_cli(root, ":long"), first, 5)
    assert returncode == 0, output
    assert "SIGTERM received" in output and "stopped early" in output
    assert 5 <= stopped < 300
    again = subprocess.run(_sweep_cli(root, ":long"), cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Resumed the population of 2" in again.stderr

    points = sweep_lib.expand(CONFIG + ":long", str(tmp_path / "straight"))
    population.train_population(
        [p.config for p in points], [p.workdir for p in points], str(tmp_path / "straight" / "_p")
    )
    for p in points:
        resumed = root / p.name
        assert (resumed / sweep_lib.DONE).exists()
        for a, b in zip(
            _member_params(resumed, p.config), _member_params(p.workdir, p.config), strict=True
        ):
            np.testing.assert_array_equal(a, b)
        rows_r = [r for r in read_metrics(str(resumed)) if r["step"] > stopped]
        rows_s = [r for r in read_metrics(p.workdir) if r["step"] > stopped]
        strip = lambda rows: [{k: v for k, v in r.items() if k not in DROP} for r in rows]  # noqa: E731
        assert strip(rows_r) == strip(rows_s)
