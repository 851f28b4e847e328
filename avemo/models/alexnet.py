"""Improved AlexNet (Sec. 4.2, Fig. 2): the face-feature extractor of the video stream.

Three 3x3 convolutions, each followed by ReLU, max-pooling and batch normalisation (the paper's
order); two fully connected layers realised as convolutions whose kernel covers the remaining
spatial extent, each followed by dropout; a linear output layer (the paper's "softmax layer"; for
regression of arousal/valence it is linear).

On FC-as-conv: a convolution with kernel = the remaining spatial size (h, w) over an h x w x C map
has a kernel of shape (h, w, C, K) -- exactly the h*w*C*K weights of the dense layer it replaces.
The parameter saving claimed in Sec. 4.2 (7*7*4096 instead of 7*7*512*4096) does not hold for an
equivalent convolution; `tests/models/test_alexnet.py` counts both. `FullyConnectedAsConv` keeps
the literal convolution and a reshape + dot fast path over the very same parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from avemo.models.layers import (
    conv_function,
    conv_pool,
    conv_pool_suits,
    phase_conv_applies,
    phase_conv_pool,
    pool_max,
)


class FullyConnectedAsConv(nn.Module):
    """A fully connected layer stored as a convolution kernel of shape (h, w, C, K).

    Attributes:
      features: K, the number of output units.
      impl: "conv" runs the literal VALID convolution (Sec. 4.2.4); "dense" reshapes the input to
        [N, h*w*C] and multiplies by the same kernel reshaped to [h*w*C, K]. Outputs are identical.
    """

    features: int
    impl: str = "conv"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps [N, h, w, C] to [N, 1, 1, K]."""
        _, h, w, c = x.shape
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (h, w, c, self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        if self.impl == "conv":
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=(1, 1),
                padding="VALID",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        elif self.impl == "dense":
            y = jnp.dot(x.reshape(x.shape[0], h * w * c), kernel.reshape(h * w * c, self.features))
            y = y.reshape(x.shape[0], 1, 1, self.features)
        else:
            raise ValueError(f"unknown fc impl {self.impl!r} (expected 'conv' or 'dense')")
        return y + bias.astype(self.dtype)


def to_float_images(images: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Images as `dtype`; integer (uint8) pixels are scaled to [0, 1]."""
    x = images.astype(dtype)
    if jnp.issubdtype(images.dtype, jnp.integer):
        x = x / 255.0
    return x


def regression_head(
    x: jax.Array,
    fc_features: Sequence[int],
    num_outputs: int,
    dropout: float,
    fc_impl: str,
    dtype: jnp.dtype,
    train: bool,
) -> tuple[jax.Array, jax.Array]:
    """FC layers as convolutions (ReLU + dropout each) and the linear output layer (Sec. 4.2).

    Called inside a network's compact `__call__`, so its layers (`fc1`, `fc2`, ..., `output`)
    belong to that network. Returns (embedding [N, K_last], outputs [N, num_outputs] float32).
    """
    for i, features in enumerate(fc_features):
        x = FullyConnectedAsConv(features, impl=fc_impl, dtype=dtype, name=f"fc{i + 1}")(x)
        x = nn.relu(x)
        x = nn.Dropout(dropout, deterministic=not train)(x)
    embedding = x.reshape(x.shape[0], -1)
    outputs = nn.Dense(num_outputs, dtype=dtype, name="output")(embedding)
    return embedding, outputs.astype(jnp.float32)


class ConvBlock(nn.Module):
    """3x3 convolution -> ReLU -> 2x2/2 max-pool -> batch normalisation (Sec. 4.2, Eq. 16-21).

    `pool_impl="fast"` pools the convolution's output first, then adds the bias and applies
    ReLU to the pooled values (identical outputs: pooling commutes with both; see
    `avemo.models.layers`); "reduce_window" is the literal nn.Conv -> ReLU -> `nn.max_pool`.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    dtype: jnp.dtype = jnp.float32
    pool_impl: str = "fast"
    patch_channels: int = 0  # inputs of <= this many channels: patches + matmul (layers.py)
    # Inputs of <= this many channels (and a block `layers.phase_conv_applies` to): the
    # convolution and the pooling as one convolution yielding the pooling's four phases.
    phase_channels: int = 0
    # A block with stride 1, an odd kernel, an even map and few channels
    # (`layers.conv_pool_suits`): "native" = `layers.conv_pool` (the convolution and the pooling
    # as native calls on the CPU), "xla" = XLA's ops.
    conv_pool_impl: str = "native"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        window = (self.kernel_size, self.kernel_size)
        conv = conv_function(x.shape[-1], self.patch_channels)  # None: nn.Conv's default
        if self.pool_impl == "fast":
            # The bias added after the pooling: max(x + b) = max(x) + b exactly (rounding is
            # monotone), and the convolution's output goes straight into the pooling instead of
            # being written once more with its bias (probe, the default's three blocks fwd + bwd:
            # 179 -> 157 ms). Same parameters as nn.Conv's (`ConvParams`).
            kernel, bias = ConvParams(self.features, window, name="Conv_0")(x.shape[-1])
            x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
            applies = phase_conv_applies(x.shape, self.kernel_size, self.stride)
            phase = x.shape[-1] <= self.phase_channels
            native = self.conv_pool_impl == "native" and conv_pool_suits(x.shape[-1], self.features)
            if applies and native:
                x = conv_pool(x, kernel, phase)  # native calls on the CPU; else XLA's ops
            elif applies and phase:
                x = phase_conv_pool(x, kernel)
            else:
                x = (conv or jax.lax.conv_general_dilated)(
                    x,
                    kernel,
                    (self.stride, self.stride),
                    "SAME",
                    dimension_numbers=jax.lax.conv_dimension_numbers(
                        x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC")
                    ),
                )
                x = pool_max(x, (2, 2), (2, 2))
            x = nn.relu(x + bias.astype(self.dtype))
        else:  # the literal order: convolution (+ bias) -> ReLU -> max-pooling
            x = nn.Conv(
                self.features,
                window,
                strides=(self.stride, self.stride),
                padding="SAME",
                dtype=self.dtype,
                conv_general_dilated=conv,
            )(x)
            x = pool_max(nn.relu(x), (2, 2), (2, 2), impl=self.pool_impl)
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)


class ConvParams(nn.Module):
    """The parameters of `nn.Conv(features, window)` -- `kernel` [*window, C, features] and `bias`
    [features], same names, shapes, initialisers and float32 storage -- without its computation,
    for layers that apply them in another order (checkpoints load either way)."""

    features: int
    window: tuple[int, ...]

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
        kernel = self.param(
            "kernel",
            nn.linear.default_kernel_init,
            (*self.window, in_features, self.features),
            jnp.float32,
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return kernel, bias


class ImprovedAlexNet(nn.Module):
    """Face crops [N, H, W, C] (uint8 or float) -> feature map and arousal/valence.

    Returns a dict: `feature_map` [N, h, w, C3] (the positions the attention of Eq. 28 weighs),
    `embedding` [N, K2] (after the second FC layer) and `outputs` [N, num_outputs].
    """

    conv_features: Sequence[int] = (16, 32, 64)
    # Sec. 4.2.1 mentions a stride-2 first convolution for 224x224 inputs; (2, 1, 1) turns 224
    # into the 14 x 14 = 196 attention positions of Sec. 5.1.
    conv_strides: Sequence[int] = (1, 1, 1)
    fc_features: Sequence[int] = (256, 256)
    num_outputs: int = 2
    dropout: float = 0.3
    fc_impl: str = "dense"
    kernel_size: int = 3
    dtype: jnp.dtype = jnp.float32
    pool_impl: str = "fast"
    patch_channels: int = 0  # see ConvBlock
    phase_channels: int = 0  # see ConvBlock
    conv_pool_impl: str = "native"  # see ConvBlock

    @nn.compact
    def __call__(
        self, images: jax.Array, train: bool = False, head: bool = True
    ) -> dict[str, jax.Array]:
        """`head=False` returns only `feature_map` (the FC layers are not run)."""
        x = to_float_images(images, self.dtype)
        for i, (features, stride) in enumerate(
            zip(self.conv_features, self.conv_strides, strict=True)
        ):
            x = ConvBlock(
                features,
                self.kernel_size,
                stride,
                dtype=self.dtype,
                pool_impl=self.pool_impl,
                patch_channels=self.patch_channels,
                phase_channels=self.phase_channels,
                conv_pool_impl=self.conv_pool_impl,
                name=f"conv{i + 1}",
            )(x, train)
        feature_map = x
        if not head:
            return {"feature_map": feature_map}
        embedding, outputs = regression_head(
            x, self.fc_features, self.num_outputs, self.dropout, self.fc_impl, self.dtype, train
        )
        return {
            "feature_map": feature_map,
            "embedding": embedding,
            "outputs": outputs,
        }
