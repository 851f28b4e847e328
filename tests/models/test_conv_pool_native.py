"""The native convolution + 2x2 pooling block (one C++ call per pass on the CPU,
avemo/models/native/conv_pool_cpu.cc) equals the literal layers and XLA's form: values, the
kernel's and the input's gradients, ties (all of a window's gradient to its first maximum, as
`nn.max_pool`'s), under vmap, inside the face CNN and the whole model; the program really holds
the native calls; the key is validated and gives way on a mesh.

On a machine without a C++ compiler these tests skip, unless AVEMO_REQUIRE_NATIVE=1 (CI)."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avemo import config as config_lib
from avemo.models import layers, native
from avemo.models.alexnet import ConvBlock, ImprovedAlexNet
from avemo.models.bimodal import BimodalModel, build_model
from configs import default, tiny
from tests.models.model_pairs import assert_same_train_step
from tests.models.test_fusion_remedies import _batch

if native.library("conv_pool_cpu") is None:
    if os.environ.get("AVEMO_REQUIRE_NATIVE") == "1":
        raise RuntimeError("AVEMO_REQUIRE_NATIVE=1 but the native conv_pool kernel did not build")
    pytest.skip("no native conv_pool kernel on this machine", allow_module_level=True)


def _literal(x, kernel):
    """conv (stride 1, SAME, no bias) -> nn.max_pool 2x2/2, as written."""
    y = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return nn.max_pool(y, (2, 2), strides=(2, 2))


def _native(x, kernel, phase=False):
    return layers.conv_pool(x, kernel, phase)


def _inputs(n, h, w, c, k, f, seed=0):
    key = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(key[0], (n, h, w, c))
    kernel = jax.random.normal(key[1], (k, k, c, f)) * 0.3
    target = jax.random.normal(key[2], (n, h // 2, w // 2, f))
    return x, kernel, target


def _grads(f, x, kernel, target):
    loss = lambda x, k: jnp.sum(jnp.sin(f(x, k)) * target)  # noqa: E731
    return jax.jit(jax.value_and_grad(loss, (0, 1)))(x, kernel)


# (grey, 8 channels: the default's first layer; RGB with channels that leave a part vector;
# a 5 x 5 kernel and 2 channels: the generic loops; 17 channels: three vectors, one partial;
# 8 -> 16 and 16 -> 32: the default's second and third layers (the scatter form of the backward
# pass); 5 and 12 input channels: padded channel vectors; 8 channels with a 5 x 5 kernel)
@pytest.mark.parametrize(
    "n,h,w,c,k,f", [(6, 16, 12, 1, 3, 8), (3, 8, 10, 3, 3, 5), (2, 12, 8, 2, 5, 12),
                    (4, 6, 6, 1, 3, 17), (5, 12, 12, 8, 3, 16), (3, 8, 8, 16, 3, 32),
                    (2, 8, 6, 5, 3, 7), (2, 6, 10, 12, 3, 9), (2, 10, 8, 8, 5, 8)],
)  # fmt: skip
def test_native_block_equals_the_literal_layers(n, h, w, c, k, f):
    x, kernel, target = _inputs(n, h, w, c, k, f, seed=h * f + c)
    np.testing.assert_allclose(jax.jit(_native)(x, kernel), _literal(x, kernel), atol=1e-5)
    (l_n, (dx_n, dk_n)) = _grads(_native, x, kernel, target)
    (l_l, (dx_l, dk_l)) = _grads(_literal, x, kernel, target)
    np.testing.assert_allclose(l_n, l_l, rtol=1e-5)
    np.testing.assert_allclose(dk_n, dk_l, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx_n, dx_l, rtol=1e-4, atol=1e-5)
    # the phase form (on the CPU the same native calls) and XLA's forms of the same block, the
    # fallback on other platforms
    for f in (
        lambda x, k: _native(x, k, phase=True),
        lambda x, k: jax.lax.platform_dependent(
            x, k, cpu=layers.phase_conv_pool, default=layers.phase_conv_pool
        ),
        lambda x, k: layers._xla_conv_pool(x, k, False)[0],
    ):
        (_, (dx, dk)) = _grads(f, x, kernel, target)
        np.testing.assert_allclose(dk, dk_l, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(dx, dx_l, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("c,f", [(1, 8), (8, 16)])
def test_ties_send_the_gradient_to_the_first_position_of_each_window(c, f):
    """Blank frames (absent faces are zeros) and a constant patch tie everywhere: each window's
    gradient goes to its first position, row-major, as `nn.max_pool`'s does -- not split."""
    x, kernel, target = _inputs(3, 8, 8, c, 3, f, seed=5)
    x = x.at[0].set(0.0).at[1, 2:6, 2:6].set(0.7)
    kernel = kernel.at[:, :, :, 3].set(0.0)  # a channel whose output ties at 0 everywhere
    np.testing.assert_array_equal(jax.jit(_native)(x, kernel)[0], 0.0)
    (_, (dx_n, dk_n)) = _grads(_native, x, kernel, target)
    (_, (dx_l, dk_l)) = _grads(_literal, x, kernel, target)
    np.testing.assert_allclose(dk_n, dk_l, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx_n, dx_l, rtol=1e-4, atol=1e-5)


def test_native_block_under_vmap_runs_each_copy_with_its_own_kernel():
    x, kernel, target = _inputs(4, 8, 8, 1, 3, 8, seed=1)
    xs, kernels = jnp.stack([x, x[::-1]]), jnp.stack([kernel, -2.0 * kernel])
    targets = jnp.stack([target, target[::-1]])
    batched = jax.jit(jax.vmap(_native))(xs, kernels)
    for m in range(2):
        np.testing.assert_allclose(batched[m], _literal(xs[m], kernels[m]), atol=1e-5)
    grads = jax.vmap(lambda x, k, t: _grads(_native, x, k, t)[1])(xs, kernels, targets)
    for m in range(2):
        dk = _grads(_literal, xs[m], kernels[m], targets[m])[1][1]
        np.testing.assert_allclose(grads[1][m], dk, rtol=1e-4, atol=1e-5)


def test_the_program_holds_the_native_calls_and_no_full_size_output():
    x, kernel, target = _inputs(2, 8, 8, 8, 3, 16)
    grad = jax.jit(jax.grad(lambda k: jnp.sum(_native(x, k) * target)))
    text = grad.lower(kernel).compile().as_text()
    assert "avemo_conv_pool" in text and "avemo_conv_pool_bwd" in text
    assert "convolution" not in text
    assert "avemo_conv_pool_bwd_x" not in text  # the input's gradient is left out: x is constant
    both = jax.jit(jax.grad(lambda x, k: jnp.sum(_native(x, k) * target), (0, 1)))
    assert "avemo_conv_pool_bwd_x" in both.lower(x, kernel).compile().as_text()


def test_face_cnn_and_model_with_the_native_block_equal_the_xla_ones():
    faces = jax.random.uniform(jax.random.key(0), (6, 16, 16, 1))
    kw = dict(conv_features=(4, 8, 8), fc_features=(8, 8), phase_channels=1)
    nat = ImprovedAlexNet(conv_pool_impl="native", **kw)
    xla = ImprovedAlexNet(conv_pool_impl="xla", **kw)
    variables = xla.init(jax.random.key(1), faces)
    out = lambda m: m.apply(  # noqa: E731
        variables, faces, train=True, head=False, mutable=["batch_stats"]
    )[0]
    np.testing.assert_allclose(out(nat)["feature_map"], out(xla)["feature_map"], atol=1e-5)

    batch = _batch(length=8)
    kw = dict(
        mode="fusion", conv_features=(4, 8, 8), fc_features=(8, 8), lstm_features=8,
        audio_dense_features=8, attention_features=8, output_lstm_features=8,
        video_frame_stride=2, phase_channels=1,
    )  # fmt: skip
    assert_same_train_step(
        BimodalModel(conv_pool_impl="native", **kw), BimodalModel(conv_pool_impl="xla", **kw), batch
    )


def test_blocks_with_many_channels_keep_xla_convolutions():
    """The native calls serve the blocks they are faster for (few channels, `conv_pool_suits`):
    the default's three blocks, not the paper's 96 -> 256 (XLA's convolution is faster there)."""

    def program(block, shape):
        x = jnp.zeros(shape)
        variables = block.init(jax.random.key(0), x, True)
        fn = lambda x: block.apply(variables, x, True, mutable=["batch_stats"])[0]  # noqa: E731
        return jax.jit(fn).lower(x).as_text()

    for c, f in ((1, 8), (8, 16), (16, 32)):
        assert "avemo_conv_pool" in program(ConvBlock(f, phase_channels=1), (2, 8, 8, c))
    text = program(ConvBlock(256, phase_channels=1), (2, 8, 8, 96))
    assert "avemo_conv_pool" not in text and "convolution" in text


def test_the_default_model_uses_it_on_one_device_and_not_on_a_mesh():
    config = default.get_config()
    assert config.model.conv_pool_impl == "native" and config.model.phase_conv_channels >= 1
    assert build_model(config.model).conv_pool_impl == "native"
    assert build_model(config.model, mesh_devices=2).conv_pool_impl == "xla"


def test_conv_pool_impl_is_validated():
    config = tiny.get_config()
    config.model.conv_pool_impl = "pallas"
    with pytest.raises(config_lib.ConfigError, match="model.conv_pool_impl"):
        config_lib.validate(config)
