"""Stage-1 face-feature learning: held-out R^2 on a learnable signal (and none on shuffled labels);
weights load into the bimodal model's video branch, which `freeze_video` keeps fixed."""

import json
import os

import jax
import numpy as np
import pytest

from avemo import checkpointing, stage1, train
from avemo.data import memory
from avemo.data.pipeline import PreparedSession
from configs import tiny


def _config():
    c = tiny.get_config()
    c.data.memory.train_sessions = 4
    c.data.memory.dev_sessions = 2
    c.data.memory.steps = 300
    c.data.memory.face_size = 16
    c.model.alexnet.conv_features = (8, 16, 16)
    c.model.alexnet.fc_features = (32, 32)
    c.stage1.batch_size = 32
    c.stage1.num_steps = 120
    c.stage1.learning_rate = 3e-3
    c.stage1.log_every_steps = 40
    c.stage1.eval_every_steps = 1000  # only after the last step
    return c


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("stage1"))
    config = _config()
    return config, workdir, stage1.train_stage1(config, workdir)


def _shuffled_sessions(cfg):
    """The memory corpus with the labels of training frames permuted: no face-label relation."""
    rng = np.random.default_rng(1)
    out = []
    for s in memory.make_sessions(cfg):
        arrays = dict(s.arrays)
        if s.split == "train":
            arrays["labels"] = arrays["labels"][rng.permutation(len(arrays["labels"]))]
        out.append(PreparedSession(s.name, s.split, arrays))
    return out


def test_stage1_learns_valence_from_faces_and_writes_its_outputs(stage1_run):
    config, workdir, summary = stage1_run
    # The memory corpus draws valence into the faces as a brightness pattern (Eq. 34 on dev).
    assert summary["dev/r2/valence"] > 0.3, summary
    assert summary["backbone"] == "improved_alexnet" and summary["step"] == 120
    with open(os.path.join(workdir, "stage1_metrics.json")) as f:
        assert json.load(f)["dev/r2/valence"] == pytest.approx(summary["dev/r2/valence"])
    rows = [json.loads(x) for x in open(os.path.join(workdir, "stage1", "metrics.jsonl"))]
    assert rows[-1]["step"] == 120 and "dev/r2/arousal" in rows[-1]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < losses[0]
    assert os.path.isdir(os.path.join(workdir, "stage1", stage1.WEIGHTS_DIR))


def test_stage1_finds_nothing_when_labels_are_shuffled(tmp_path, monkeypatch):
    config = _config()
    monkeypatch.setattr(train, "load_sessions", lambda c, w: _shuffled_sessions(c.data.memory))
    summary = stage1.train_stage1(config, str(tmp_path))
    assert summary["dev/r2/valence"] < 0.1, summary


def test_face_frames_keep_only_steps_with_a_face():
    sessions = memory.make_sessions(_config().data.memory)
    pairs = stage1.face_frames(sessions, ("train",), stride=2)
    assert {sessions[i].split for i in pairs[:, 0]} == {"train"}
    assert all(sessions[i].arrays["face_present"][t] == 1 for i, t in pairs)
    all_pairs = stage1.face_frames(sessions, ("train",))
    assert len(pairs) == sum((len(all_pairs[all_pairs[:, 0] == i]) + 1) // 2 for i in range(4))
    assert len(stage1.eval_frames(all_pairs, 100)) == 100


def _bimodal_state(config):
    sessions = train.load_sessions(config, "")
    trainer = train.Trainer(config, train.example_batch(sessions, config, 1), 10)
    return trainer, trainer.init_state()


def _stage1_tree(workdir):
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    tree = checkpointer.restore(os.path.join(workdir, "stage1", stage1.WEIGHTS_DIR))
    checkpointer.close()
    return tree


def _assert_tree_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_weights_load_into_the_video_branch(stage1_run):
    config, workdir, _ = stage1_run
    _, state = _bimodal_state(config)
    params, stats = stage1.load_into(state.params, state.batch_stats, workdir)
    saved = _stage1_tree(workdir)
    _assert_tree_equal(params["alexnet"], saved["params"])
    _assert_tree_equal(stats["alexnet"], saved["batch_stats"])
    _assert_tree_equal(params["audio_lstm"], state.params["audio_lstm"])  # others untouched
    # A video branch of other sizes is refused with the offending key.
    other = _config()
    other.model.alexnet.fc_features = (32, 16)
    _, other_state = _bimodal_state(other)
    with pytest.raises(stage1.config_lib.ConfigError, match="fc2"):
        stage1.load_into(other_state.params, other_state.batch_stats, workdir)


def test_frozen_video_branch_keeps_stage1_weights_while_the_rest_trains(stage1_run, tmp_path):
    config, stage1_dir, _ = stage1_run
    config = _config()
    config.model.video_init = stage1_dir
    config.model.freeze_video = True
    config.train.num_steps = 3
    config.train.eval_every_steps = 3
    config.train.checkpoint_every_steps = 3
    config.checkpoint.async_save = False
    train.train_and_evaluate(config, str(tmp_path))
    trainer, initial = _bimodal_state(config)
    ckpt = checkpointing.Checkpointer(str(tmp_path), "dev/ccc_pooled/mean", async_save=False)
    state, _ = ckpt.restore(ckpt.latest_step(), trainer.restore_target(), None)
    ckpt.close()
    saved = _stage1_tree(stage1_dir)
    _assert_tree_equal(state.params["alexnet"], saved["params"])
    _assert_tree_equal(state.batch_stats["alexnet"], saved["batch_stats"])
    for name in ("audio_lstm", "attention", "head"):
        changed = [
            not np.array_equal(a, b)
            for a, b in zip(
                jax.tree.leaves(state.params[name]),
                jax.tree.leaves(initial.params[name]),
                strict=True,
            )
        ]
        assert any(changed), name
