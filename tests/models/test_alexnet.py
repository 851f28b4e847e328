"""Improved AlexNet: literal FC-as-conv == reshape+dot fast path; parameter counts (Sec. 4.2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avemo.models.alexnet import FullyConnectedAsConv, ImprovedAlexNet


def _count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("size,channels", [(32, 1), (48, 3)])
def test_conv_and_dense_paths_give_identical_outputs(size, channels):
    images = jax.random.uniform(jax.random.key(0), (4, size, size, channels)) * 255
    conv = ImprovedAlexNet(conv_features=(8, 16, 16), fc_features=(32, 32), fc_impl="conv")
    dense = ImprovedAlexNet(conv_features=(8, 16, 16), fc_features=(32, 32), fc_impl="dense")
    variables = conv.init(jax.random.key(1), images)
    # The same parameter tree serves both implementations.
    assert jax.tree.structure(variables) == jax.tree.structure(
        dense.init(jax.random.key(1), images)
    )
    out_conv = conv.apply(variables, images)
    out_dense = dense.apply(variables, images)
    # The same sums in another order: float32 rounding (up to 7e-5 relative on one CPU).
    for key in ("embedding", "outputs"):
        np.testing.assert_allclose(out_conv[key], out_dense[key], rtol=2e-4, atol=1e-4)
    # Training mode (dropout, batch statistics) with the same rng agrees too.
    rngs = {"dropout": jax.random.key(2)}
    a, _ = conv.apply(variables, images, train=True, rngs=rngs, mutable=["batch_stats"])
    b, _ = dense.apply(variables, images, train=True, rngs=rngs, mutable=["batch_stats"])
    np.testing.assert_allclose(a["outputs"], b["outputs"], rtol=2e-4, atol=1e-4)


def test_fc_as_conv_has_exactly_the_parameters_of_the_dense_layer():
    # The paper's example (Sec. 4.2.4): 7x7x512 input, 4096 units.
    x = jnp.zeros((1, 7, 7, 512))
    params = jax.eval_shape(FullyConnectedAsConv(4096).init, jax.random.key(0), x)
    assert _count(params) == 7 * 7 * 512 * 4096 + 4096  # = a Dense layer's count, not 7*7*4096


def test_paper_shaped_network_shapes_and_parameter_count():
    net = ImprovedAlexNet(
        conv_features=(96, 256, 384), conv_strides=(2, 1, 1), fc_features=(4096, 4096)
    )
    x = jnp.zeros((1, 224, 224, 3), jnp.uint8)
    variables = jax.eval_shape(net.init, jax.random.key(0), x)
    out = jax.eval_shape(net.apply, variables, x)
    # 224 -> stride-2 conv -> 112 -> three 2x2 pools -> 14: the 196 positions of Sec. 5.1.
    assert out["feature_map"].shape == (1, 14, 14, 384)
    assert out["outputs"].shape == (1, 2)
    fc1 = variables["params"]["fc1"]["kernel"]
    assert fc1.shape == (14, 14, 384, 4096)
    print("paper-shaped improved AlexNet parameters:", _count(variables["params"]))


def test_uint8_input_is_scaled_like_float_input():
    net = ImprovedAlexNet(conv_features=(4, 4, 4), fc_features=(8, 8))
    raw = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 1)).astype(np.uint8)
    variables = net.init(jax.random.key(0), raw)
    np.testing.assert_allclose(
        net.apply(variables, raw)["outputs"],
        net.apply(variables, raw.astype(np.float32) / 255)["outputs"],
        rtol=1e-6,
    )
