"""A checkpoint written by an earlier avemo, whose optimizer kept state for the face CNN's
stage-1 head, still loads for inference (parameters only, with a warning)."""

import logging

import jax
import numpy as np

from avemo import checkpointing, inference, train
from avemo.data.corpora import synthetic
from tests.trained_model import OPTIONS, tiny_recordings_config


def test_checkpoint_with_another_optimizer_state_loads_its_parameters(
    tmp_path, monkeypatch, caplog
):
    root = synthetic.generate(tmp_path / "corpus", OPTIONS, workers=1, progress=False)
    config = tiny_recordings_config(root, tmp_path / "cache")
    config.train.num_steps = 2
    config.train.eval_every_steps = 2
    config.train.checkpoint_every_steps = 2
    workdir = tmp_path / "workdir"
    make = train.make_optimizer
    # The earlier optimizer: Adam state for every parameter, the stage-1 head included.
    monkeypatch.setattr(
        train, "make_optimizer", lambda c, n, bimodal=True: make(c, n, bimodal=False)
    )
    train.train_and_evaluate(config, str(workdir))
    monkeypatch.setattr(train, "make_optimizer", make)

    ckpt = checkpointing.Checkpointer(str(workdir), f"dev/{config.checkpoint.best_metric}")
    step = ckpt.best_step() or ckpt.latest_step()
    saved = ckpt.restore_untyped(step)
    ckpt.close()
    with caplog.at_level(logging.WARNING, logger="avemo"):
        model = inference.load(str(workdir))
    assert "restored the parameters only" in caplog.text
    assert model.step == step
    for key in ("params", "batch_stats"):
        got = jax.tree.leaves(jax.device_get(getattr(model.state, key)))
        want = jax.tree.leaves(saved[key])
        assert len(got) == len(want)
        for x, y in zip(got, want):
            np.testing.assert_array_equal(x, y)
