"""Fast-path layers equal the literal ones: max-pooling (values and gradients), ReLU order."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avemo.models.alexnet import ImprovedAlexNet
from avemo.models.audio_cnn import AudioCNN
from avemo.models.backbones import InceptionNet, TraditionalAlexNet, VGGNet
from avemo.models.layers import max_pool


@pytest.mark.parametrize(
    "shape,window,strides,padding",
    [
        ((2, 8, 8, 3), (2, 2), (2, 2), "VALID"),
        ((2, 9, 7, 3), (2, 2), (2, 2), "VALID"),  # odd sizes: the last row/column is dropped
        ((2, 9, 9, 2), (3, 3), (2, 2), "SAME"),
        ((2, 10, 10, 2), (3, 3), (1, 1), "SAME"),
        ((2, 11, 6, 2), (3, 2), (2, 1), "VALID"),
        ((2, 7, 7, 2), (2, 2), (2, 2), "SAME"),
    ],
)
def test_max_pool_equals_flax_max_pool_values_and_gradients(shape, window, strides, padding):
    x = jax.random.normal(jax.random.key(0), shape)
    ours = max_pool(x, window, strides, padding)
    ref = nn.max_pool(x, window, strides=strides, padding=padding)
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)
    g = jax.random.normal(jax.random.key(1), ref.shape)
    grad_ours = jax.grad(lambda v: jnp.sum(max_pool(v, window, strides, padding) * g))(x)
    grad_ref = jax.grad(lambda v: jnp.sum(nn.max_pool(v, window, strides, padding) * g))(x)
    np.testing.assert_allclose(grad_ours, grad_ref, rtol=1e-6, atol=1e-6)


def _pair(make, x):
    fast, literal = make("fast"), make("reduce_window")
    variables = literal.init(jax.random.key(1), x)
    rngs = {"dropout": jax.random.key(2)}

    def run(model, v):
        out, _ = model.apply(v, x, train=True, rngs=rngs, mutable=["batch_stats"])
        return out

    def loss(params, model):
        return jnp.sum(run(model, {**variables, "params": params})["outputs"] ** 2)

    np.testing.assert_allclose(
        run(fast, variables)["outputs"], run(literal, variables)["outputs"], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        fast.apply(variables, x)["outputs"], literal.apply(variables, x)["outputs"], rtol=1e-5
    )
    g_fast = jax.grad(loss)(variables["params"], fast)
    g_lit = jax.grad(loss)(variables["params"], literal)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_lit), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda impl: ImprovedAlexNet((4, 8, 8), fc_features=(16, 16), pool_impl=impl),
        lambda impl: TraditionalAlexNet((4, 8, 8, 8, 4), fc_features=(16,), pool_impl=impl),
        lambda impl: VGGNet((4, 8), fc_features=(16,), pool_impl=impl),
        lambda impl: InceptionNet(
            4, ((2, 2, 4, 2, 2, 2),), (0,), fc_features=(16,), pool_impl=impl
        ),
    ],
    ids=["improved_alexnet", "alexnet", "vgg", "inception"],
)
def test_fast_pooling_networks_equal_literal_networks(make):
    x = jax.random.uniform(jax.random.key(0), (3, 24, 24, 1)) * 255
    _pair(make, x)


def test_audio_cnn_fast_pooling_equals_literal():
    x = jax.random.normal(jax.random.key(0), (2, 12, 10))
    fast, literal = AudioCNN(pool_impl="fast"), AudioCNN(pool_impl="reduce_window")
    variables = literal.init(jax.random.key(1), x)
    np.testing.assert_allclose(fast.apply(variables, x), literal.apply(variables, x), rtol=1e-6)
