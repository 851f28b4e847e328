"""Dropout whose rate may be a traced array (population training: one rate per member).

`flax.linen.Dropout` branches in Python on its rate (`rate == 0` returns the input untouched), so a
rate that is a jax array -- a per-member hyper-parameter under `jax.vmap` in `avemo.population` --
cannot reach it. This `Dropout` behaves exactly like Flax's for a Python number (same module name,
same random stream: `make_rng("dropout")` in its own scope, Bernoulli keep mask, inputs / keep) and
takes the array path otherwise, where a rate of 0 keeps everything (the mask is all ones) and the
output equals the input.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


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
        mask = jax.random.bernoulli(rng, p=keep_prob, shape=broadcast_shape)
        mask = jnp.broadcast_to(mask, inputs.shape)
        if not static:
            keep_prob = keep_prob.astype(inputs.dtype)
        return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))
