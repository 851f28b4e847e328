"""`train.stage_schedule = "continued"`: one learning-rate schedule over the face stage and the
fusion, the stage its first steps and the fusion the rest (issue 9)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from avemo import config as config_lib
from avemo import train, warm_start
from configs import default


def _config(face_init="", **train_keys):
    """The default with `train_keys` set (stage_schedule "restart" unless given)."""
    train_keys.setdefault("stage_schedule", "restart")
    c = default.get_config()
    c.model.face_init = face_init
    for key, value in train_keys.items():
        setattr(c.train, key, value)
    return config_lib.validate(c)


def _rates(config, total_steps: int, steps: list[int]) -> list[float]:
    schedule = train.learning_rate(config, total_steps, config.train.learning_rate)
    return [float(schedule(k)) for k in steps]


def _cosine(config, length: int):
    t = config.train
    return optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, t.warmup_steps, length)


def test_continued_schedule_runs_the_stage_on_its_first_steps_and_the_fusion_on_the_rest():
    config = _config(stage_schedule="continued")  # face stage 900 + fusion 900
    stage = warm_start.stage_config(config)
    whole = _cosine(config, 1800)
    steps = [0, 25, 300, 899]
    stage_rates = _rates(stage, stage.train.num_steps, steps)
    fusion_rates = _rates(config, config.train.num_steps, steps)
    np.testing.assert_allclose(stage_rates, [float(whole(k)) for k in steps], rtol=1e-5)
    np.testing.assert_allclose(fusion_rates, [float(whole(900 + k)) for k in steps], rtol=1e-5)
    # the fusion starts where the stage stopped, on the cosine (no second warm-up)
    t = config.train
    halfway = (900 - t.warmup_steps) / (1800 - t.warmup_steps)
    expected = t.learning_rate * 0.5 * (1 + np.cos(np.pi * halfway))
    assert fusion_rates[0] == pytest.approx(expected, rel=1e-5)


def test_restart_schedule_gives_each_run_its_own_warm_up_and_cosine():
    config = _config()
    stage = warm_start.stage_config(config)
    own = _cosine(config, 900)
    steps = [0, 25, 450, 899]
    for run in (stage, config):
        np.testing.assert_allclose(
            _rates(run, 900, steps), [float(own(k)) for k in steps], rtol=1e-5
        )


def test_schedule_start_by_hand_continues_a_stage_named_by_face_init():
    """What a fusion warm-started by model.face_init from a "continued" stage sets by hand."""
    config = _config("/some/stage", face_stage_steps=0, schedule_start=900)
    whole = _cosine(config, 1800)
    np.testing.assert_allclose(
        _rates(config, 900, [0, 400]),
        [float(whole(k)) for k in (900, 1300)],
        rtol=1e-5,
    )


def test_face_continued_gives_the_face_tower_the_stage_schedule_and_the_rest_their_own():
    config = _config(stage_schedule="face_continued")
    stage = warm_start.stage_config(config)
    whole, own = _cosine(config, 1800), _cosine(config, 900)
    steps = [0, 25, 300, 899]
    peak = config.train.learning_rate
    np.testing.assert_allclose(
        _rates(stage, 900, steps), [float(whole(k)) for k in steps], rtol=1e-5
    )
    tower = train.learning_rate(config, 900, peak, face_tower=True)
    rest = train.learning_rate(config, 900, peak, face_tower=False)
    np.testing.assert_allclose(
        [float(tower(k)) for k in steps], [float(whole(900 + k)) for k in steps], rtol=1e-5
    )
    np.testing.assert_allclose([float(rest(k)) for k in steps], [float(own(k)) for k in steps])
    # a fusion warm-started by model.face_init from such a stage: schedule_start by hand
    by_hand = _config(
        "/some/stage", stage_schedule="face_continued", face_stage_steps=0, schedule_start=900
    )
    tower = train.learning_rate(by_hand, 900, peak, face_tower=True)
    rest = train.learning_rate(by_hand, 900, peak, face_tower=False)
    assert float(tower(0)) == pytest.approx(float(whole(900)), rel=1e-5)
    assert float(rest(25)) == pytest.approx(float(own(25)), rel=1e-5)
    # in the optimizer: the face tower's first Adam update is its rate, the rest's is 0 (warm-up)
    params = {"face_lstm": {"kernel": jnp.zeros((3, 2))}, "head_0": {"kernel": jnp.zeros((3, 2))}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    tx = train.make_optimizer(config, 900)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(
        -np.asarray(updates["face_lstm"]["kernel"]), float(whole(900)), rtol=1e-5
    )
    np.testing.assert_allclose(np.asarray(updates["head_0"]["kernel"]), 0.0)


def test_the_optimizer_applies_the_continued_rate_from_its_first_step():
    """make_optimizer uses it: Adam's first update of a parameter is -lr * sign(g) (to its
    epsilon), and a continued fusion's first rate is the schedule's at the stage's end."""
    config = _config(stage_schedule="continued")
    params = {"head": {"kernel": jnp.zeros((3, 2))}}
    tx = train.make_optimizer(config, config.train.num_steps)
    updates, _ = tx.update({"head": {"kernel": jnp.full((3, 2), 0.5)}}, tx.init(params), params)
    expected = float(_cosine(config, 1800)(900))
    np.testing.assert_allclose(-np.asarray(updates["head"]["kernel"]), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "keys",
    [
        dict(stage_schedule="sometimes"),
        dict(stage_schedule="continued", audio_stage_steps=100),
        dict(stage_schedule="continued", num_steps=0, num_epochs=1),
        dict(stage_schedule="face_continued", face_stage_steps=0, schedule_start=900),
        dict(schedule_steps=-1),
        dict(schedule_start=-5),
    ],
)
def test_config_rejects_a_stage_schedule_it_cannot_run(keys):
    with pytest.raises(config_lib.ConfigError, match="schedule"):
        _config(**keys)


@pytest.mark.parametrize("schedule", ["continued", "face_continued"])
def test_a_run_without_a_face_stage_runs_the_plain_schedule(schedule):
    """Nothing to continue (the face stage off, no face_init): every group's rate is the one
    schedule of a restart run, so turning the stage off needs no second key."""
    config = _config(stage_schedule=schedule, face_stage_steps=0)
    plain = _config(face_stage_steps=0)
    own = _cosine(plain, 1800)
    steps = [0, 25, 900, 1799]
    peak = config.train.learning_rate
    for face_tower in (False, True):
        rate = train.learning_rate(config, 1800, peak, face_tower=face_tower)
        np.testing.assert_allclose([float(rate(k)) for k in steps], [float(own(k)) for k in steps])
    # and one optimizer over all (no second group to run the same schedule)
    params = {"face_lstm": {"kernel": jnp.zeros((3, 2))}, "head_0": {"kernel": jnp.zeros((3, 2))}}
    states = [train.make_optimizer(c, 1800).init(params) for c in (config, plain)]
    assert jax.tree.structure(states[0]) == jax.tree.structure(states[1])
