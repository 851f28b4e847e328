"""Fast-path layers equal the literal ones: max-pooling (values and gradients), ReLU order."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avemo.models.alexnet import ImprovedAlexNet
from avemo.models.audio_cnn import AudioCNN
from avemo.models.backbones import InceptionNet, TraditionalAlexNet, VGGNet
from avemo.models.layers import max_pool, patch_conv, phase_conv_applies, phase_conv_pool


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


@pytest.mark.parametrize("window", [(2, 2), (3, 3), (1, 4), (4, 3)])
def test_block_pooling_gradient_equals_flax_on_ties(window):
    """Non-overlapping windows: each window's gradient goes to its first maximum, as with
    `nn.max_pool` (select_and_scatter), also where inputs tie: constant frames (absent faces,
    zeroed) and rounded values with many exact ties."""
    x = jax.random.normal(jax.random.key(0), (3, 12, 12, 2))
    x = x.at[0].set(0.0).at[1].set(jnp.round(x[1]))
    g = jax.random.normal(jax.random.key(1), (3, 12 // window[0], 12 // window[1], 2))
    grad_ours = jax.grad(lambda v: jnp.sum(max_pool(v, window, window) * g))(x)
    grad_ref = jax.grad(lambda v: jnp.sum(nn.max_pool(v, window, strides=window) * g))(x)
    assert int(jnp.sum(grad_ref[0] != 0)) == g[0].size  # one input per window gets it all
    np.testing.assert_array_equal(grad_ours, grad_ref)


def _pair(make, x, grad_rtol=1e-4):
    fast, literal = make("fast"), make("reduce_window")
    variables = literal.init(jax.random.key(1), x)
    # Non-zero biases (they initialise to zero): the fast blocks add theirs after the pooling.
    variables = jax.tree_util.tree_map_with_path(
        lambda path, v: (
            v + 0.3 * jax.random.normal(jax.random.key(v.size), v.shape)
            if path[-1].key == "bias"
            else v
        ),
        variables,
    )
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
        # A gradient that cancels to zero (a bias before BatchNorm) keeps the summation's
        # roundoff, which scales with the leaf's largest entries: the absolute tolerance too.
        atol = max(1e-5, 1e-4 * float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=grad_rtol, atol=atol)


@pytest.mark.parametrize(
    "make",
    [
        lambda impl: ImprovedAlexNet((4, 8, 8), fc_features=(16, 16), pool_impl=impl),
        # the first two blocks as the pooling's phases (model.phase_conv_channels)
        lambda impl: ImprovedAlexNet(
            (4, 8, 8), fc_features=(16, 16), pool_impl=impl, phase_channels=4
        ),
        lambda impl: TraditionalAlexNet((4, 8, 8, 8, 4), fc_features=(16,), pool_impl=impl),
        lambda impl: VGGNet((4, 8), fc_features=(16,), pool_impl=impl),
        lambda impl: InceptionNet(
            4, ((2, 2, 4, 2, 2, 2),), (0,), fc_features=(16,), pool_impl=impl
        ),
    ],
    ids=["improved_alexnet", "improved_alexnet_phases", "alexnet", "vgg", "inception"],
)
def test_fast_pooling_networks_equal_literal_networks(make):
    x = jax.random.uniform(jax.random.key(0), (3, 24, 24, 1)) * 255
    _pair(make, x)


def test_audio_cnn_fast_pooling_equals_literal():
    x = jax.random.normal(jax.random.key(0), (2, 12, 10))
    fast, literal = AudioCNN(pool_impl="fast"), AudioCNN(pool_impl="reduce_window")
    variables = literal.init(jax.random.key(1), x)
    np.testing.assert_allclose(fast.apply(variables, x), literal.apply(variables, x), rtol=1e-6)


@pytest.mark.parametrize(
    "shape,kernel,strides,padding",
    [
        ((2, 9, 10, 3), (3, 3, 3, 5), (2, 2), "SAME"),  # the paper's RGB first layer, stride 2
        ((2, 12, 12, 1), (2, 2, 1, 4), (1, 1), "SAME"),  # the audio CNN's first layer
        ((3, 8, 8, 4), (3, 3, 4, 6), (1, 1), "SAME"),
        ((1, 7, 7, 2), (3, 3, 2, 3), (2, 2), "VALID"),
    ],
)
def test_patch_conv_equals_the_convolution_values_and_gradients(shape, kernel, strides, padding):
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), kernel)

    def conv(fn):
        return lambda a, b: fn(
            a, b, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
        )

    lax_conv = conv(jax.lax.conv_general_dilated)
    ours = patch_conv(x, w, strides, padding, precision="highest")
    ref = lax_conv(x, w)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(jax.random.key(2), ref.shape)
    grads = [
        jax.grad(lambda a, b, f=f: jnp.sum(f(a, b) * g), argnums=(0, 1))(x, w)
        for f in (lambda a, b: patch_conv(a, b, strides, padding, precision="highest"), lax_conv)
    ]
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_patch_conv_networks_equal_the_literal_networks():
    """Same parameters (names, shapes) and the same outputs and gradients with the few-channel
    convolutions as patches + matmul (the face CNN's RGB layer, the audio CNN's first two)."""
    faces = jax.random.uniform(jax.random.key(0), (3, 24, 24, 3)) * 255
    _pair(
        lambda impl: ImprovedAlexNet(
            (4, 8, 8), (2, 1, 1), fc_features=(16,), patch_channels=3 if impl == "fast" else 0
        ),
        faces,
        # the sums of the first layer in another order: float32 rounding, which the train-mode
        # BatchNorm of a 3-image batch amplifies in the gradients (max 4e-4 relative)
        grad_rtol=2e-3,
    )
    spec = jax.random.normal(jax.random.key(0), (2, 12, 10))
    fast, literal = AudioCNN(patch_channels=4), AudioCNN()
    variables = literal.init(jax.random.key(1), spec)
    assert jax.tree.structure(fast.init(jax.random.key(1), spec)) == jax.tree.structure(variables)
    np.testing.assert_allclose(
        fast.apply(variables, spec), literal.apply(variables, spec), rtol=1e-5, atol=1e-6
    )
    grads = [
        jax.grad(lambda p, m=m: jnp.sum(m.apply({"params": p}, spec) ** 2))(variables["params"])
        for m in (fast, literal)
    ]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels,kernel_size", [(1, 3), (3, 5)])
def test_phase_conv_pool_equals_conv_then_pool(channels, kernel_size):
    """The pooling's four phases as one convolution of the space-to-depth input: the same values
    and gradients as SAME convolution -> 2x2/2 `nn.max_pool`; constant frames (absent faces) tie
    in every window and send each window's gradient to its first position, as nn.max_pool."""
    x = jax.random.normal(jax.random.key(0), (3, 12, 8, channels))
    x = x.at[0].set(0.0)
    kernel = 0.3 * jax.random.normal(jax.random.key(1), (kernel_size, kernel_size, channels, 4))
    g = jax.random.normal(jax.random.key(2), (3, 6, 4, 4))

    def literal(x, kernel):
        y = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return nn.max_pool(y, (2, 2), strides=(2, 2))

    np.testing.assert_allclose(phase_conv_pool(x, kernel), literal(x, kernel), rtol=1e-5, atol=1e-5)
    grads = [
        jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) * g), argnums=(0, 1))(x, kernel)
        for f in (phase_conv_pool, literal)
    ]
    for ours, ref in zip(*grads, strict=True):
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_phase_conv_pool_refuses_blocks_it_does_not_compute():
    assert not phase_conv_applies((1, 12, 12, 1), 3, 2)  # stride 2
    assert not phase_conv_applies((1, 12, 12, 1), 4, 1)  # even kernel
    assert not phase_conv_applies((1, 11, 12, 1), 3, 1)  # odd map
    with pytest.raises(ValueError, match="do not fit"):
        phase_conv_pool(jnp.zeros((1, 11, 12, 1)), jnp.zeros((3, 3, 1, 2)))
