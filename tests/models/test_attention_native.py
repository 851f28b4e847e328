"""The native attention (Eq. 28-29 as one C++ call per pass on the CPU,
avemo/models/native/attention_cpu.cc) equals XLA's: parameters, values, gradients (with and
without the feature map's and the weights' parts), under vmap, inside the whole model; the
program really holds the native calls.

On a machine without a C++ compiler these tests skip, unless AVEMO_REQUIRE_NATIVE=1 (CI)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from avemo import config as config_lib
from avemo.models import native
from avemo.models.attention import SpatialAttention, attention_pool
from avemo.models.bimodal import BimodalModel
from configs import tiny
from tests.models.model_pairs import assert_same_train_step
from tests.models.test_fusion_remedies import _batch

if native.library("attention_cpu") is None:
    if os.environ.get("AVEMO_REQUIRE_NATIVE") == "1":
        raise RuntimeError("AVEMO_REQUIRE_NATIVE=1 but the native attention kernel did not build")
    pytest.skip("no native attention kernel on this machine", allow_module_level=True)


def _reference(fmap, q, kernel, w):  # Eq. (28)-(29) as written, one einsum after another
    keys = jnp.einsum("...kc,ca->...ka", fmap, kernel)  # W F_i
    scores = jnp.tanh(keys[..., None, :, :] + q[..., :, None, :]) @ w  # w_h^T tanh(W F_i + W_g h)
    weights = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("...sk,...kc->...sc", weights, fmap), weights


def _inputs(r, k, c, s, a, seed=0):
    key = jax.random.split(jax.random.key(seed), 6)
    fmap = jax.random.normal(key[0], (3, r, k, c))
    q = jax.random.normal(key[1], (3, r, s, a))
    kernel = jax.random.normal(key[2], (c, a)) * 0.3
    w = jax.random.normal(key[3], (a,))
    targets = jax.random.normal(key[4], (3, r, s, c)), jax.random.normal(key[5], (3, r, s, k))
    return (fmap, q, kernel, w), targets


def _close(x, y):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=2e-6 * float(jnp.abs(y).max()))


# positions K and channels C: multiples of 16 (16 x 16 transposes, whole vectors), 20 / 40 / 36
# (vectors and leftovers), 3 / 6 (scalar only); features A: 32, 6, 40, 17 (padded to vectors)
@pytest.mark.parametrize(
    "r,k,c,s,a", [(5, 64, 32, 4, 32), (3, 20, 40, 1, 6), (4, 3, 6, 3, 40), (2, 36, 16, 2, 17),
                  (33, 32, 48, 4, 16)],
)  # fmt: skip
def test_native_pool_equals_xla_values_and_gradients(r, k, c, s, a):
    args, (t_pooled, t_weights) = _inputs(r, k, c, s, a, seed=k * a + s)
    for x, y in zip(jax.jit(attention_pool)(*args), _reference(*args), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)

    def loss(f, use_weights):  # the weights' cotangent present or a symbolic zero
        def fn(*args):
            pooled, weights = f(*args)
            return jnp.sum(pooled * t_pooled) + (jnp.sum(weights * t_weights) if use_weights else 0)

        return fn

    for use_weights in (False, True):
        g_native = jax.jit(jax.grad(loss(attention_pool, use_weights), (0, 1, 2, 3)))(*args)
        g_xla = jax.jit(jax.grad(loss(_reference, use_weights), (0, 1, 2, 3)))(*args)
        for x, y in zip(g_native, g_xla, strict=True):
            _close(x, y)
    hlo = jax.jit(jax.grad(loss(attention_pool, False))).lower(*args).as_text()
    assert "avemo_attention_pool" in hlo and "avemo_attention_pool_bwd" in hlo


def test_frozen_feature_map_skips_its_gradient_and_keeps_the_others():
    """A feature map under stop_gradient (a frozen face branch): the backward call is asked for
    no feature-map gradient (a [0] result) and the others equal XLA's."""
    (fmap, *params), (t_pooled, _) = _inputs(6, 64, 32, 4, 32)

    def loss(f):
        return lambda q, kernel, w: jnp.sum(
            f(jax.lax.stop_gradient(fmap), q, kernel, w)[0] * t_pooled
        )

    g_native = jax.jit(jax.grad(loss(attention_pool), (0, 1, 2)))(*params)
    for x, y in zip(g_native, jax.grad(loss(_reference), (0, 1, 2))(*params), strict=True):
        _close(x, y)
    frozen = jax.jit(jax.grad(loss(attention_pool), (0, 1, 2))).lower(*params).as_text()
    assert _bwd_results(frozen).startswith("(tensor<0xf32>, ")
    live = jax.jit(jax.grad(lambda f: jnp.sum(attention_pool(f, *params)[0]))).lower(fmap)
    shape = "x".join(map(str, fmap.shape))
    assert _bwd_results(live.as_text()).startswith(f"(tensor<{shape}xf32>, ")


def _bwd_results(hlo: str) -> str:
    """The result types of the one backward call in a lowered program."""
    (line,) = [ln for ln in hlo.splitlines() if "@avemo_attention_pool_bwd(" in ln]
    return line.rsplit(" -> ", 1)[1]


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


def test_native_pool_under_vmap_population_members():
    fmap = jax.random.normal(jax.random.key(0), (3, 2, 4, 20, 24))  # 3 members
    q = jax.random.normal(jax.random.key(1), (3, 2, 4, 4, 32))
    kernel = jax.random.normal(jax.random.key(2), (3, 24, 32)) * 0.3  # a W and w per member
    w = jax.random.normal(jax.random.key(3), (3, 32))

    def grads(f):
        def loss(*args):
            pooled, weights = f(*args)
            return jnp.sum(jnp.sin(pooled)) + jnp.sum(weights[..., 0])

        return jax.jit(jax.vmap(jax.value_and_grad(loss, (0, 1, 2, 3))))(fmap, q, kernel, w)

    for x, y in zip(jax.tree.leaves(grads(attention_pool)), jax.tree.leaves(grads(_reference))):
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
