"""The bimodal optimizer leaves the face CNN's stage-1 head (FC layers, output) alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avemo import train
from configs import tiny


def _params():
    ones = lambda *s: jnp.ones(s, jnp.float32)  # noqa: E731
    return {
        "alexnet": {
            "conv1": {"Conv_0": {"kernel": ones(3, 3, 1, 4)}},
            "fc1": {"kernel": ones(2, 2, 4, 8), "bias": ones(8)},
            "output": {"kernel": ones(8, 2), "bias": ones(2)},
        },
        "head": {"kernel": ones(4, 2), "bias": ones(2)},
    }


def _moment_values(state) -> int:
    return sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)


@pytest.mark.parametrize("mode", ["fusion", "video", "audio"])
def test_bimodal_optimizer_gives_the_stage1_head_no_update_and_no_state(mode):
    config = tiny.get_config()
    config.model.mode = mode
    params = _params()
    grads = jax.tree.map(jnp.ones_like, params)
    tx = train.make_optimizer(config, 100)
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
    assert moved["head"]["kernel"] and moved["alexnet"]["conv1"]["Conv_0"]["kernel"]
    face_head = mode in ("fusion", "video")  # the modes that run the face CNN's maps
    assert moved["alexnet"]["fc1"]["kernel"] is not face_head
    assert moved["alexnet"]["output"]["bias"] is not face_head
    # Adam keeps two moments per trained value and none for the stage-1 head.
    head_values = 2 * 2 * 4 * 8 + 8 + 8 * 2 + 2
    trained = sum(x.size for x in jax.tree.leaves(params)) - (head_values if face_head else 0)
    assert _moment_values(state) == 2 * trained


def test_stage1_optimizer_trains_the_head():
    config = tiny.get_config()
    params = _params()
    tx = train.make_optimizer(config, 100, bimodal=False)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert all(bool(jnp.all(u != 0)) for u in jax.tree.leaves(updates))


def test_bimodal_step_leaves_the_stage1_head_unchanged_and_trains_the_convolutions():
    """A real train step: the FC layers are not run (no gradient) and not updated."""
    config = tiny.get_config()
    rng = np.random.default_rng(0)
    b, length, size = 2, 8, config.video.crop_size
    batch = {
        "faces": rng.integers(0, 255, (b, length, size, size, 1)).astype(np.uint8),
        "face_present": np.ones((b, length), np.float32),
        "audio_features": rng.standard_normal((b, length, 12)).astype(np.float32),
        "speech_energy": np.ones((b, length), np.float32),
        "labels": rng.uniform(-1, 1, (b, length, 2)).astype(np.float32),
        "mask": np.ones((b, length), np.float32),
    }
    trainer = train.Trainer(config, batch, 10)
    state = trainer.init_state()
    before = jax.device_get(state.params["alexnet"])
    state, _ = trainer.train_step(state, trainer.to_global(batch), trainer.base_rng)
    after = jax.device_get(state.params["alexnet"])
    for name in before:
        same = all(
            np.array_equal(x, y)
            for x, y in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name]))
        )
        assert same is (not name.startswith("conv")), name


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_face_init_lr_scale_scales_the_warm_started_face_tower_only(scale):
    """train.face_init_lr_scale: the layers a face warm start loads (alexnet's convolutions,
    face_lstm, attention, face_context_lstm, video_head) step at `scale` times the rest's rate;
    the stage-1 head still gets nothing; Adam's first steps move each value by its rate."""
    config = tiny.get_config()
    config.train.face_stage_steps = 10  # a warm start
    config.train.face_init_lr_scale = scale
    config.train.grad_clip_norm = 0.0
    ones = lambda *s: jnp.ones(s, jnp.float32)  # noqa: E731
    params = {
        **_params(),
        "face_lstm": {"cell": {"kernel": ones(4, 8)}},
        "video_head": {"kernel": ones(4, 2)},
        "face_memory": {"kernel": ones(4, 4)},
        "audio_lstm": {"cell": {"kernel": ones(4, 8)}},
    }
    tx = train.make_optimizer(config, 100)
    state = tx.init(params)
    for _ in range(config.train.warmup_steps + 1):
        updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    step = lambda tree: float(jnp.abs(jax.tree.leaves(tree)[0]).max())  # noqa: E731
    base = step(updates["head"])
    assert base > 0
    for name in ("face_lstm", "video_head"):
        np.testing.assert_allclose(step(updates[name]), scale * base, rtol=1e-5)
    np.testing.assert_allclose(step(updates["alexnet"]["conv1"]), scale * base, rtol=1e-5)
    for name in ("face_memory", "audio_lstm"):  # fusion-only layers: the full rate
        np.testing.assert_allclose(step(updates[name]), base, rtol=1e-5)
    assert step(updates["alexnet"]["fc1"]) == 0.0
