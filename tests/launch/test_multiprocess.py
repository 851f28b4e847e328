"""Two local CPU processes (jax.distributed, gloo) train exactly like one process."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from configs import tiny
from tests.checkpoints import latest_state
from tests.conftest import ROOT

STEPS = 4
OVERRIDES = [
    f"--config.train.num_steps={STEPS}",
    f"--config.train.eval_every_steps={STEPS}",
    f"--config.train.checkpoint_every_steps={STEPS}",
    "--config.train.log_every_steps=1",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _cli(workdir, *extra):
    return [
        sys.executable,
        "-m",
        "avemo.main",
        "--config",
        "configs/tiny.py",
        "--workdir",
        str(workdir),
        *OVERRIDES,
        *extra,
    ]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device each
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _final_params(workdir):
    config = tiny.get_config()
    config.train.num_steps = STEPS
    state = latest_state(workdir, config)
    return [np.asarray(x) for x in jax.tree.leaves((state.params, state.batch_stats))]


def test_two_processes_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    port = _free_port()
    procs = [
        subprocess.Popen(
            _cli(two, f"--coordinator=localhost:{port}", "--num_processes=2", f"--process_id={i}"),
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    single = subprocess.run(_cli(one), cwd=ROOT, env=_env(), capture_output=True, text=True)
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert single.returncode == 0, single.stderr
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
    assert "process 0 of 2" in logs[0] and "step 4/4" in logs[0]
    assert "step 4/4" not in logs[1]  # only process 0 reports progress

    m1 = json.loads((one / "final_metrics.json").read_text())
    m2 = json.loads((two / "final_metrics.json").read_text())
    assert m1["step"] == m2["step"] == STEPS
    assert m1.keys() == m2.keys()
    for key in m1:
        np.testing.assert_allclose(m2[key], m1[key], rtol=1e-4, atol=1e-6, err_msg=key)
    rows1 = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    rows2 = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows1] == [r["step"] for r in rows2]  # written once, by process 0
    for r1, r2 in zip(rows1, rows2):
        for key in r1.keys() - {"train/steps_per_second"}:
            np.testing.assert_allclose(r2[key], r1[key], rtol=1e-4, atol=1e-6, err_msg=key)

    # Checkpoints: one state, each process's data-iterator position.
    data = sorted(os.listdir(two / "checkpoints" / str(STEPS) / "data"))
    assert "process_0-of-2.json" in data and "process_1-of-2.json" in data
    for a, b in zip(_final_params(one), _final_params(two), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
