"""Fast forms of standard layers whose outputs equal the literal ones (tested side by side).

Max-pooling: `flax.linen.max_pool` lowers to `reduce_window`, whose gradient XLA turns into a
`select_and_scatter`; on XLA CPU that gradient costs more than the convolution before it. The same
pooling written as a reshape + max (non-overlapping windows) or as an elementwise maximum of
shifted slices (overlapping windows) has a gradient of plain fused elementwise ops. The forward
values are identical; the gradient differs only where two inputs of one window tie exactly at the
maximum (the reduction splits it between them, `select_and_scatter` gives it to the first) -- a
measure-zero event for float activations (exact zeros after a ReLU get no gradient either way).

`conv_relu_pool` applies ReLU after the pooling: max-pooling and ReLU commute (ReLU is
monotone), so the result equals ReLU -> pool, with the elementwise ReLU on a quarter of the values.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def _pads(shape: Sequence[int], window: Sequence[int], strides: Sequence[int], padding):
    if isinstance(padding, str):
        return lax.padtype_to_pads(shape, window, strides, padding)
    return [tuple(p) for p in padding]


def max_pool(
    x: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
) -> jax.Array:
    """`flax.linen.max_pool` over the spatial axes of [N, *spatial, C], same arguments and values.

    Non-overlapping VALID windows (window == stride): crop + reshape + max over the window axes.
    Otherwise: pad with -inf, then per spatial axis the maximum of the `k` strided slices.
    """
    window_shape = tuple(window_shape)
    strides = tuple(strides) if strides is not None else (1,) * len(window_shape)
    spatial = x.shape[1:-1]
    if len(window_shape) != len(spatial) or len(strides) != len(spatial):
        raise ValueError(f"pooling window {window_shape} does not fit input shape {x.shape}")
    pads = _pads(spatial, window_shape, strides, padding)
    if window_shape == strides and all(p == (0, 0) for p in pads):
        out_sizes = [s // k for s, k in zip(spatial, window_shape, strict=True)]
        x = x[(slice(None),) + tuple(slice(0, o * k) for o, k in zip(out_sizes, window_shape))]
        shape = [x.shape[0]]
        for o, k in zip(out_sizes, window_shape, strict=True):
            shape += [o, k]
        x = x.reshape(shape + [x.shape[-1]])
        return x.max(axis=tuple(2 + 2 * i for i in range(len(spatial))))
    if any(p != (0, 0) for p in pads):
        neg = jnp.array(-jnp.inf, x.dtype)
        x = jnp.pad(x, [(0, 0)] + list(pads) + [(0, 0)], constant_values=neg)
    for axis, (k, s) in enumerate(zip(window_shape, strides, strict=True), start=1):
        size = x.shape[axis]
        out = (size - k) // s + 1
        parts = [
            lax.slice_in_dim(x, i, i + (out - 1) * s + 1, stride=s, axis=axis) for i in range(k)
        ]
        y = parts[0]
        for part in parts[1:]:
            y = jnp.maximum(y, part)
        x = y
    return x


POOL_IMPLS = ("fast", "reduce_window")


def pool_max(
    x: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    impl: str = "fast",
) -> jax.Array:
    """Max-pooling by `impl`: "fast" (`max_pool` above) or "reduce_window" (`nn.max_pool`)."""
    if impl == "fast":
        return max_pool(x, window_shape, strides, padding)
    if impl == "reduce_window":
        import flax.linen as nn

        return nn.max_pool(x, tuple(window_shape), strides=strides, padding=padding)
    raise ValueError(f"unknown pool impl {impl!r} (expected one of {POOL_IMPLS})")
