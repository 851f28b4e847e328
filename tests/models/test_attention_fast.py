"""The attention's efficient form (W_v after the weighted sum, held maps not repeated) equals the
literal Eq. (28)-(29) with the W_v projection, computed here independently."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avemo.models.attention import SpatialAttention


def _literal(params, fmap, query):
    """Eq. (28)-(29) per position: a = softmax(w_h tanh(W F + W_g h)), c = sum a W_v F."""
    p = params["params"]
    keys = fmap @ p["W"]["kernel"] + p["W"]["bias"]
    q = query @ p["W_g"]["kernel"]
    scores = (jnp.tanh(keys + q[:, :, None]) @ p["w_h"]["kernel"])[..., 0]
    a = jax.nn.softmax(scores, axis=-1)
    values = fmap @ p["W_v"]["kernel"] + p["W_v"]["bias"]
    return jnp.einsum("blk,blkd->bld", a, values), a


@pytest.mark.parametrize("length,stride", [(12, 1), (12, 4), (10, 4), (7, 3)])
def test_attention_equals_the_literal_equations(length, stride):
    rng = jax.random.split(jax.random.key(0), 3)
    maps = -(-length // stride)
    fmap = jax.random.normal(rng[0], (2, maps, 5, 6))
    query = jax.random.normal(rng[1], (2, length, 7))
    att = SpatialAttention(8, 7)
    params = att.init(rng[2], fmap, query, stride)
    context, weights = att.apply(params, fmap, query, stride)
    held = jnp.repeat(fmap, stride, axis=1)[:, :length]
    ref_context, ref_weights = _literal(params, held, query)
    assert context.shape == (2, length, 7) and weights.shape == (2, length, 5)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(context, ref_context, rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda p: jnp.sum(att.apply(p, fmap, query, stride)[0] ** 2))(params)
    g_ref = jax.grad(
        lambda p: jnp.sum(_literal(p, jnp.repeat(fmap, stride, axis=1)[:, :length], query)[0] ** 2)
    )(params)
    for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_attention_refuses_maps_that_do_not_cover_the_steps():
    att = SpatialAttention(4, 3)
    with pytest.raises(ValueError, match="do not cover"):
        att.init(jax.random.key(0), jnp.zeros((1, 2, 3, 2)), jnp.zeros((1, 12, 3)), 4)
