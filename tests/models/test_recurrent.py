"""The fused LSTM (input projection outside the scan, hand-written backward pass) equals the
literal `nn.RNN(nn.OptimizedLSTMCell)`: parameters, outputs and gradients, alone and inside the
whole model, under vmap (population training) and in bfloat16."""

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from avemo import config as config_lib
from avemo.models.bimodal import BimodalModel
from avemo.models.recurrent import SequenceLSTM, lstm_scan
from configs import tiny
from tests.models.model_pairs import assert_same_train_step
from tests.models.test_fusion_remedies import _batch


def _close_trees(a, b, rtol, atol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(
            np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=rtol, atol=atol
        )


@pytest.mark.parametrize("length,dense", [(1, 0), (2, 0), (37, 0), (23, 5)])
def test_fused_lstm_equals_flax_lstm_parameters_outputs_and_gradients(length, dense):
    x = jax.random.normal(jax.random.key(1), (3, length, 7))
    fused, literal = SequenceLSTM(6, dense, impl="fused"), SequenceLSTM(6, dense, impl="flax")
    variables = literal.init(jax.random.key(0), x)
    # Same parameter names, shapes and initial values: checkpoints load either way.
    np.testing.assert_array_equal(
        ravel_pytree(fused.init(jax.random.key(0), x))[0],
        ravel_pytree(variables)[0],
    )
    np.testing.assert_allclose(fused.apply(variables, x), literal.apply(variables, x), atol=1e-6)
    target = jax.random.normal(jax.random.key(2), (3, length, 6))

    def loss(v, inputs, model):  # a loss that weighs every step's output differently
        return jnp.sum((model.apply(v, inputs) - target) ** 2 * jnp.arange(1, length + 1)[:, None])

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    g_fused, g_literal = grad(variables, x, fused), grad(variables, x, literal)
    _close_trees(g_fused, g_literal, rtol=1e-4, atol=1e-5)


def test_lstm_scan_gradient_matches_finite_differences():
    """The hand-written VJP against numerical derivatives (float64), independent of flax."""
    with jax.enable_x64():
        rng = np.random.default_rng(0)
        xw = jnp.asarray(rng.standard_normal((5, 2, 12)))
        w_h = jnp.asarray(rng.standard_normal((3, 12)) * 0.5)
        jax.test_util.check_grads(lstm_scan, (xw, w_h), order=1, modes=["rev"], atol=1e-6)


@pytest.mark.parametrize("mode", ["fusion", "video"])
def test_model_with_fused_lstms_equals_the_literal_model(mode):
    """Every LSTM of the model (audio, face, face-context, output; the video-only model's) at
    once, in a train-mode step's loss and its gradient."""
    batch = _batch(length=9)
    kw = dict(
        mode=mode, conv_features=(4, 8, 8), fc_features=(8, 8), lstm_features=8,
        audio_dense_features=8, attention_features=8, output_lstm_features=8,
        video_lstm_features=8 if mode == "fusion" else 0, face_context_lstm=mode == "fusion",
        attention_query="face" if mode == "fusion" else "audio", modality_heads=mode == "fusion",
    )  # fmt: skip
    fused, literal = BimodalModel(lstm_impl="fused", **kw), BimodalModel(lstm_impl="flax", **kw)
    assert_same_train_step(fused, literal, batch)


def test_fused_lstm_under_vmap_and_in_bfloat16():
    x = jax.random.normal(jax.random.key(1), (2, 3, 11, 5))  # 2 members
    fused, literal = SequenceLSTM(4, impl="fused"), SequenceLSTM(4, impl="flax")
    members = jax.vmap(lambda k: literal.init(k, x[0]))(jax.random.split(jax.random.key(0), 2))

    def grads(model):
        return jax.jit(jax.vmap(jax.grad(lambda v, xi: jnp.sum(model.apply(v, xi) ** 2))))(
            members, x
        )

    _close_trees(grads(fused), grads(literal), rtol=1e-4, atol=1e-5)
    one = jax.tree.map(lambda a: a[0], members)
    lo = SequenceLSTM(4, dtype=jnp.bfloat16, impl="fused").apply(one, x[0])
    ref = literal.apply(one, x[0])
    assert lo.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(lo, np.float32), ref, atol=0.03)
    g = jax.grad(
        lambda v: jnp.sum(SequenceLSTM(4, dtype=jnp.bfloat16).apply(v, x[0]).astype(jnp.float32))
    )(one)
    assert all(a.dtype == jnp.float32 and np.isfinite(a).all() for a in jax.tree.leaves(g))


def test_lstm_impl_is_validated():
    config = tiny.get_config()
    config.model.lstm_impl = "cudnn"
    with pytest.raises(config_lib.ConfigError, match="model.lstm_impl"):
        config_lib.validate(config)
