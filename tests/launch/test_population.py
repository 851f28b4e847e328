"""Population training: members equal separate runs, shape groups, array-rate dropout, the face
map outside the model (SIGTERM and resume: test_population_resume.py; device mesh:
test_population_mesh.py)."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avemo import population, train
from avemo.data import memory
from avemo.models.bimodal import build_model
from avemo.models.dropout import Dropout
from avemo.reporting.writers import read_metrics
from configs import tiny
from launch import sweep as sweep_lib
from tests.checkpoints import latest_state
from tests.conftest import ROOT

CONFIG = os.path.join(ROOT, "tests", "launch", "population_tiny.py")
DROP = ("train/steps_per_second",)


def _config(seed=0, aux=0.1, lr=5e-4, head_dropout=0.1, steps=4):
    c = tiny.get_config()
    c.checkpoint.async_save = False
    c.seed, c.loss.aux_weight, c.train.learning_rate = seed, aux, lr
    c.model.head_dropout = head_dropout
    # Every loss term of the default model takes part (the heads' loss was once dropped by
    # population training: members then trained another objective than their separate runs).
    c.model.modality_heads = True
    c.train.num_steps = steps
    return c


def _assert_same_run(pop_dir, sep_dir, rtol=1e-4, atol=1e-5):
    rows_p, rows_s = read_metrics(str(pop_dir)), read_metrics(str(sep_dir))
    assert [r["step"] for r in rows_p] == [r["step"] for r in rows_s]
    for rp, rs in zip(rows_p, rows_s, strict=True):
        assert rp.keys() == rs.keys()
        for key in rs.keys() - set(DROP):
            np.testing.assert_allclose(rp[key], rs[key], rtol=rtol, atol=atol, err_msg=key)
    fp = json.loads((pop_dir / "final_metrics.json").read_text())
    fs = json.loads((sep_dir / "final_metrics.json").read_text())
    assert fp.keys() == fs.keys() and fp["step"] == fs["step"]
    for key in fs:
        np.testing.assert_allclose(fp[key], fs[key], rtol=rtol, atol=atol, err_msg=key)


def _member_params(workdir, config):
    """A member's latest checkpoint, restored with the separate-run Trainer's target."""
    state = latest_state(workdir, config)
    return [np.asarray(x) for x in jax.tree.leaves((state.params, state.opt_state))]


@pytest.mark.slow
def test_members_equal_separate_runs_with_the_same_overrides_and_data_order(tmp_path):
    # Two members differing in seed, lambda, learning rate and dropout; each with its own data
    # order ("member"), so each must equal a separate run with its overrides.
    configs = [_config(0, 0.0), _config(1, 1.0, lr=1e-3, head_dropout=0.5)]
    members = [tmp_path / "pop" / "a", tmp_path / "pop" / "b"]
    population.train_population(
        configs, [str(m) for m in members], str(tmp_path / "pop" / "_p"), data_order="member"
    )
    for config, member, name in zip(configs, members, ("a", "b"), strict=True):
        separate = tmp_path / "sep" / name
        train.train_and_evaluate(config, str(separate))
        _assert_same_run(member, separate)
        for a, b in zip(
            _member_params(member, config), _member_params(separate, config), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        for name_ in ("config.json", "metrics.jsonl", "final_metrics.json"):
            assert (member / name_).exists()
        assert json.loads((member / "config.json").read_text())["seed"] == config.seed

    # Shared data order: one batch per step feeds both; with the same seed (hence the same data
    # order) the member with other lambda / lr / dropout equals its separate run too.
    shared = [_config(1, 0.0), _config(1, 1.0, lr=1e-3, head_dropout=0.5)]
    dirs = [tmp_path / "shared" / "a", tmp_path / "shared" / "b"]
    population.train_population(shared, [str(d) for d in dirs], str(tmp_path / "shared" / "_p"))
    _assert_same_run(dirs[1], tmp_path / "sep" / "b")


def test_points_that_change_shapes_form_separate_groups(tmp_path):
    points = sweep_lib.expand(CONFIG + ":shapes", str(tmp_path))
    pops = sweep_lib.plan_populations(points)
    assert [[p.name for p in pop] for pop in pops] == [
        [p.name for p in points[:2]],
        [p.name for p in points[2:]],
    ]
    lines = sweep_lib.describe_populations(pops, str(tmp_path))
    assert lines[-1] == "  separate programs because these keys differ: model.lstm_features"
    assert [len(pop) for pop in sweep_lib.plan_populations(points, members=1)] == [1] * 4
    with pytest.raises(population.PopulationError, match="model.lstm_features"):
        population.PopulationTrainer([points[0].config, points[2].config], {}, 1)


def test_array_rate_dropout_equals_flax_dropout():
    x = jnp.arange(1.0, 201.0).reshape(4, 50)
    rng = {"dropout": jax.random.key(3)}
    for rate in (0.0, 0.3, 0.5):
        ref = nn.Dropout(rate).apply({}, x, deterministic=False, rngs=rng)
        as_float = Dropout(rate).apply({}, x, deterministic=False, rngs=rng)
        as_array = jax.jit(
            lambda r: Dropout(r).apply({}, x, deterministic=False, rngs=rng)  # noqa: B023
        )(jnp.float32(rate))
        np.testing.assert_array_equal(as_float, ref)
        np.testing.assert_allclose(as_array, ref, rtol=1e-6)
    assert float(jnp.mean(as_array == 0)) > 0.3  # it does drop


def test_face_feature_map_outside_the_model_gives_the_same_outputs():
    config = tiny.get_config()
    config.model.video_frame_stride = 2
    sessions = memory.make_sessions(config.data.memory)
    batch = {k: jnp.asarray(v) for k, v in train.example_batch(sessions, config, 2).items()}
    batch["faces"] = jax.random.uniform(jax.random.key(1), batch["faces"].shape) * 255
    model = build_model(config.model)
    variables = model.init(jax.random.key(0), batch)
    direct = model.apply(variables, batch)["outputs"]
    alex = {c: v["alexnet"] for c, v in variables.items()}
    # training windows carry every s-th step's crops only: `steps` says how many steps they span
    length = batch["mask"].shape[1]
    assert batch["faces"].shape[1] == -(-length // 2)
    fmap, _ = population.face_feature_map(model, alex, batch["faces"], False, steps=length)
    outside = model.apply(variables, {**batch, "face_feature_map": fmap})["outputs"]
    np.testing.assert_allclose(outside, direct, rtol=1e-6, atol=1e-6)
    # and every step's crops (evaluation windows) give the same maps
    every, _ = population.face_feature_map(model, alex, jnp.repeat(batch["faces"], 2, 1), False)
    np.testing.assert_array_equal(every[:, : fmap.shape[1]], fmap)


def test_member_predictions_keep_the_heads_a_single_model_keeps(tmp_path):
    """What a population's evaluation predicts per member holds what `inference.load(...).predict`
    of that member holds: the fused outputs, the gate and the modality heads' outputs (the
    post-processing's face weight reads the face head; a population once dropped the heads, and
    its reports then skipped that step where a member's own evaluation applied it)."""
    from avemo import inference

    configs = [_config(0, steps=2), _config(1, steps=2)]
    members = [str(tmp_path / "a"), str(tmp_path / "b")]
    population.train_population(configs, members, str(tmp_path / "_p"), data_order="member")
    trainer, state, _, _ = population.restore_members(members)
    sessions = [s for s in memory.make_sessions(configs[0].data.memory) if s.split == "dev"]
    together = population.MemberPredictions(trainer, state).for_member(1)("normal", sessions)
    alone = inference.load(members[1], "best").predict(sessions)
    for s in sessions:
        assert {"outputs", "audio_outputs", "video_outputs", "audio_gate"} <= together[
            s.name
        ].keys()
        assert together[s.name].keys() == alone[s.name].keys()
        for key, value in alone[s.name].items():
            np.testing.assert_allclose(together[s.name][key], value, rtol=1e-5, atol=1e-6)
