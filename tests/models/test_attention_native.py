"""The native attention scores (Eq. 28 as one C++ call per pass on the CPU,
avemo/models/native/attention_cpu.cc) equal XLA's: parameters, values, gradients, under vmap,
inside the whole model; the program really holds the native calls.

On a machine without a C++ compiler these tests skip, unless AVEMO_REQUIRE_NATIVE=1 (CI)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from avemo import config as config_lib
from avemo.models import native
from avemo.models.attention import SpatialAttention, attention_scores
from avemo.models.bimodal import BimodalModel
from configs import tiny
from tests.models.model_pairs import assert_same_train_step
from tests.models.test_fusion_remedies import _batch

if native.library("attention_cpu") is None:
    if os.environ.get("AVEMO_REQUIRE_NATIVE") == "1":
        raise RuntimeError("AVEMO_REQUIRE_NATIVE=1 but the native attention kernel did not build")
    pytest.skip("no native attention kernel on this machine", allow_module_level=True)


def _reference(keys, q, w):  # Eq. (28)'s scores as written: w^T tanh(W F_i + W_g h)
    return jnp.tanh(keys[:, :, None] + q[:, :, :, None, :]) @ w


# positions K: a multiple of 16 (vector path), 20 (16 + 4 left over), 3 (none vectorised);
# features A: 32 (two vectors), 40 (two + 8 left over), 6 (scalar)
@pytest.mark.parametrize("k,a,s", [(64, 32, 4), (20, 40, 1), (3, 6, 3), (36, 16, 2)])
def test_native_scores_equal_xla_values_and_gradients(k, a, s):
    key = jax.random.split(jax.random.key(k * a + s), 4)
    keys = jax.random.normal(key[0], (3, 5, k, a)) * 2.0
    q = jax.random.normal(key[1], (3, 5, s, a))
    w = jax.random.normal(key[2], (a,))
    target = jax.random.normal(key[3], (3, 5, s, k))

    def loss(f):  # through the softmax over positions, as in the model
        return lambda keys, q, w: jnp.sum(jax.nn.softmax(f(keys, q, w), -1) * target)

    np.testing.assert_allclose(
        jax.jit(attention_scores)(keys, q, w), _reference(keys, q, w), rtol=1e-5, atol=1e-5
    )
    g_native = jax.jit(jax.grad(loss(attention_scores), (0, 1, 2)))(keys, q, w)
    g_xla = jax.jit(jax.grad(loss(_reference), (0, 1, 2)))(keys, q, w)
    for x, y in zip(g_native, g_xla, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=2e-6 * float(jnp.abs(y).max()))
    hlo = jax.jit(jax.grad(loss(attention_scores))).lower(keys, q, w).as_text()
    assert "avemo_attention_scores" in hlo and "avemo_attention_scores_bwd" in hlo


def test_spatial_attention_native_equals_xla_parameters_and_outputs():
    fm = jax.random.normal(jax.random.key(0), (2, 5, 20, 8))  # 5 maps held for 4 steps
    query = jax.random.normal(jax.random.key(1), (2, 18, 12))
    nat, xla = SpatialAttention(32, 10, impl="native"), SpatialAttention(32, 10, impl="xla")
    variables = xla.init(jax.random.key(2), fm, query, 4)
    np.testing.assert_array_equal(  # same names, shapes, initial values: checkpoints load
        ravel_pytree(nat.init(jax.random.key(2), fm, query, 4))[0], ravel_pytree(variables)[0]
    )
    for x, y in zip(nat.apply(variables, fm, query, 4), xla.apply(variables, fm, query, 4)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_native_scores_under_vmap_population_members():
    keys = jax.random.normal(jax.random.key(0), (3, 2, 4, 20, 32))  # 3 members
    q = jax.random.normal(jax.random.key(1), (3, 2, 4, 4, 32))
    w = jax.random.normal(jax.random.key(2), (3, 32))  # a w per member

    def grads(f):
        g = jax.vmap(jax.value_and_grad(lambda k, q, w: jnp.sum(jnp.sin(f(k, q, w))), (0, 1, 2)))
        return jax.jit(g)(keys, q, w)

    for x, y in zip(jax.tree.leaves(grads(attention_scores)), jax.tree.leaves(grads(_reference))):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_model_with_native_kernels_equals_the_xla_model():
    """The fusion model (face-queried attention, four LSTMs) with both native kernels against
    XLA's ops: a train step's loss and gradient."""
    batch = _batch(length=9)
    kw = dict(
        mode="fusion", conv_features=(4, 8, 8), fc_features=(8, 8), lstm_features=8,
        audio_dense_features=8, attention_features=16, output_lstm_features=8,
        video_lstm_features=8, face_context_lstm=True, attention_query="face",
        modality_heads=True, video_frame_stride=2,
    )  # fmt: skip
    nat = BimodalModel(lstm_impl="native", attention_impl="native", **kw)
    xla = BimodalModel(lstm_impl="fused", attention_impl="xla", **kw)
    assert_same_train_step(nat, xla, batch)


def test_attention_impl_is_validated():
    config = tiny.get_config()
    config.model.attention_impl = "pallas"
    with pytest.raises(config_lib.ConfigError, match="model.attention_impl"):
        config_lib.validate(config)
