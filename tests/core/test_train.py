"""Training loop: resume exactness, the CLI, bad configs, non-finite loss (SIGTERM:
test_train_sigterm.py)."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from avemo import checkpointing, train
from avemo import config as config_lib
from avemo.reporting.writers import read_metrics
from configs import tiny
from tests.checkpoints import latest_state
from tests.conftest import ROOT


def _final_params(workdir, config):
    state = latest_state(workdir, config)
    return [
        np.asarray(x) for x in jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
    ]


def _rows(workdir, first_step):
    drop = ("train/steps_per_second",)
    return [
        {k: v for k, v in r.items() if k not in drop}
        for r in read_metrics(workdir)
        if r["step"] > first_step
    ]


def test_resume_is_identical_to_straight_run(tmp_path):
    n = 6
    straight = tiny.get_config()
    straight.train.num_steps = 2 * n
    train.train_and_evaluate(straight, str(tmp_path / "straight"))

    first = tiny.get_config()
    first.train.num_steps = n
    train.train_and_evaluate(first, str(tmp_path / "resumed"))
    second = tiny.get_config()
    second.train.num_steps = 2 * n
    train.train_and_evaluate(second, str(tmp_path / "resumed"))

    for a, b in zip(
        _final_params(str(tmp_path / "straight"), straight),
        _final_params(str(tmp_path / "resumed"), second),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert _rows(str(tmp_path / "straight"), n) == _rows(str(tmp_path / "resumed"), n)


def _cli(workdir, *overrides, **kwargs):
    return [
        sys.executable,
        "-m",
        "avemo.main",
        "--config",
        "configs/tiny.py",
        "--workdir",
        str(workdir),
        *overrides,
    ]


def test_cli_tiny_run_writes_checkpoint_and_metrics(tmp_path):
    result = subprocess.run(_cli(tmp_path / "w"), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.path.isdir(tmp_path / "w" / "checkpoints" / "6")
    rows = read_metrics(str(tmp_path / "w"))
    assert any("dev/ccc_pooled/arousal" in r for r in rows)
    assert any("train/loss" in r for r in rows)
    assert os.listdir(tmp_path / "w" / "tensorboard")


@pytest.mark.parametrize(
    "override,needle",
    [
        ("--config.train.no_such_key=1", "unknown config key config.train.no_such_key"),
        ("--config.train.num_steps=abc", "num_steps"),
        ("--config.model.mode=trimodal", "config.model.mode"),
    ],
)
def test_cli_bad_config_is_one_line_error(tmp_path, override, needle):
    result = subprocess.run(
        _cli(tmp_path / "w", override), cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_validate_rejects_unknown_keys_and_types():
    config = tiny.get_config()
    config.unlock()
    config.train.lr = 0.1
    with pytest.raises(config_lib.ConfigError, match="unknown config key.*train.lr"):
        config_lib.validate(config)
    config = tiny.get_config()
    config.unlock()
    del config.train["batch_size"]
    config.train.batch_size = "8"
    with pytest.raises(config_lib.ConfigError, match="train.batch_size must be int"):
        config_lib.validate(config)


def test_non_finite_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    config = tiny.get_config()
    config.train.num_steps = 6
    train.train_and_evaluate(config, str(tmp_path))  # good checkpoint at step 6
    config = tiny.get_config()
    config.train.num_steps = 12
    config.train.learning_rate = 1e30  # Adam steps of ~1e30 overflow the activations
    with pytest.raises(train.NonFiniteLossError, match=r"at step \d+"):
        train.train_and_evaluate(config, str(tmp_path))
    ckpt = checkpointing.Checkpointer(str(tmp_path), "dev/ccc_pooled/mean")
    assert ckpt.latest_step() == 6
    ckpt.close()
