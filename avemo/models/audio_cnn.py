"""Audio CNN of Sec. 6.2: three convolutions + three 3x3/1 max-pools over log-mel patches.

Kernels 2x2x4, 3x3x16, 3x3x32 with zero ("SAME") padding, each followed by ReLU and a 3x3 max-pool
with stride 1 (also SAME, so the map keeps its 120 x 120 size as the paper requires). The paper does
not say how the map becomes a vector; we average over the time axis (keeping the frequency axis,
where the emotional cues of pitch and formants live) and project with a dense layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from avemo.models.layers import conv_function, pool_max


class AudioCNN(nn.Module):
    """Patches [N, P_time, P_freq] -> [N, output_features]."""

    features: Sequence[int] = (4, 16, 32)
    kernel_sizes: Sequence[Sequence[int]] = ((2, 2), (3, 3), (3, 3))
    pool_size: int = 3
    output_features: int = 64
    dtype: jnp.dtype = jnp.float32
    pool_impl: str = "fast"  # see avemo.models.layers (identical outputs)
    patch_channels: int = 0  # inputs of <= this many channels: patches + matmul (layers.py)

    @nn.compact
    def __call__(self, patches: jax.Array) -> jax.Array:
        x = patches.astype(self.dtype)[..., None]
        for features, kernel in zip(self.features, self.kernel_sizes, strict=True):
            x = nn.Conv(
                features,
                tuple(kernel),
                padding="SAME",
                dtype=self.dtype,
                conv_general_dilated=conv_function(x.shape[-1], self.patch_channels),
            )(x)
            # ReLU and max-pooling commute (ReLU is monotone): pool first, then ReLU.
            x = pool_max(x, (self.pool_size, self.pool_size), (1, 1), "SAME", self.pool_impl)
            x = nn.relu(x)
        x = x.mean(axis=1)  # over time: [N, P_freq, C]
        x = x.reshape(x.shape[0], -1)
        return nn.relu(nn.Dense(self.output_features, dtype=self.dtype)(x))
