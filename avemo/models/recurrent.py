"""Scanned LSTM of Sec. 5.1: h_t = f(h_{t-1}, x_t) (Eq. 27) over a sequence of step features."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class SequenceLSTM(nn.Module):
    """Dense (the "full connection layer" of Sec. 5.1) -> ReLU -> LSTM scanned over time.

    Maps [B, L, D] to hidden states [B, L, features]. `dense_features = 0` skips the dense layer.
    """

    features: int
    dense_features: int = 0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        if self.dense_features:
            x = nn.relu(nn.Dense(self.dense_features, dtype=self.dtype, name="input_dense")(x))
        cell = nn.OptimizedLSTMCell(self.features, dtype=self.dtype, name="cell")
        return nn.RNN(cell, name="rnn")(x)
