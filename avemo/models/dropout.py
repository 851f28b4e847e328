"""Dropout whose rate may be a traced array (population training: one rate per member).

`flax.linen.Dropout` branches in Python on its rate (`rate == 0` returns the input untouched), so a
rate that is a jax array -- a per-member hyper-parameter under `jax.vmap` in `avemo.population` --
cannot reach it. This `Dropout` behaves exactly like Flax's for a Python number (same module name,
same random stream: `make_rng("dropout")` in its own scope, Bernoulli keep mask, inputs / keep) and
takes the array path otherwise, where a rate of 0 keeps everything (the mask is all ones) and the
output equals the input.

On the CPU the keep mask's random bits come from one native call (`bernoulli`, below;
avemo/models/native/random_cpu.cc) instead of JAX's threefry, which XLA CPU runs as a while loop
(~1 ms per dropout layer in the default train step): the same bits, so the same mask as
`jax.random.bernoulli` bit for bit (tests/models/test_dropout_native.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from avemo.models import native


def is_active(rate: Any) -> bool:
    """Whether a dropout layer exists for `rate`: a positive number, or any (traced) array."""
    return not isinstance(rate, int | float) or rate > 0


class Dropout(nn.Dropout):
    """`nn.Dropout` that also accepts a scalar jax array (or tracer) as its rate."""

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng: Any = None):
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        rate = self.rate
        static = isinstance(rate, int | float)
        if deterministic or (static and rate == 0.0):
            return inputs
        if static and rate == 1.0:
            return jnp.zeros_like(inputs)
        keep_prob = 1.0 - rate if static else 1.0 - jnp.asarray(rate, jnp.float32)
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        broadcast_shape = list(inputs.shape)
        for dim in self.broadcast_dims:
            broadcast_shape[dim] = 1
        mask = bernoulli(rng, keep_prob, tuple(broadcast_shape))
        mask = jnp.broadcast_to(mask, inputs.shape)
        if not static:
            keep_prob = keep_prob.astype(inputs.dtype)
        return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))


def _threefry_key_data(key: jax.Array) -> jax.Array | None:
    """u32[2] of a threefry2x32 key (typed, or raw u32[2] under the default impl), else None."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key) if str(jax.random.key_impl(key)) == "threefry2x32" else None
    if key.dtype == jnp.uint32 and key.shape == (2,):
        return key if jax.config.jax_default_prng_impl == "threefry2x32" else None
    return None


def _native_usable() -> bool:  # the kernel implements the partitionable counter scheme
    return jax.config.jax_threefry_partitionable and native.available("random_cpu")


def random_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """`jax.random.bits(key, shape, jnp.uint32)`: on the CPU one native call for a threefry key
    (the same bits), else JAX's."""
    data = _threefry_key_data(key)
    if data is None or not _native_usable():
        return jax.random.bits(key, shape, jnp.uint32)

    def cpu(data):
        return jax.ffi.ffi_call(
            "avemo_threefry_bits",
            jax.ShapeDtypeStruct(shape, jnp.uint32),
            vmap_method="broadcast_all",  # one key per vmapped copy (population members)
        )(data)

    return jax.lax.platform_dependent(
        data, cpu=cpu, default=lambda _: jax.random.bits(key, shape, jnp.uint32)
    )


def bernoulli(key: jax.Array, p, shape: tuple[int, ...]) -> jax.Array:
    """`jax.random.bernoulli(key, p, shape)`, bit for bit, from `random_bits`: JAX's uniform
    (the 23 high bits as the mantissa of a float in [1, 2), minus 1) compared with p."""
    p = jnp.asarray(p, jnp.float32)
    bits = random_bits(key, shape)
    one = np.array(1.0, np.float32).view(np.uint32)
    floats = jax.lax.bitcast_convert_type((bits >> np.uint32(9)) | one, jnp.float32) - 1.0
    return floats < p
