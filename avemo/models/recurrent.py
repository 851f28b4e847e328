"""Scanned LSTM of Sec. 5.1: h_t = f(h_{t-1}, x_t) (Eq. 27) over a sequence of step features.

Two implementations of the same LSTM (`impl`), with the same parameters (names, shapes,
initialisers: those of `flax.linen.OptimizedLSTMCell`, so checkpoints load either way):

- "flax": the literal `nn.RNN(nn.OptimizedLSTMCell)`: every step projects its input, and JAX's
  reverse-mode scan accumulates the weight gradients step by step.
- "fused" (default): the input projection x_t W_i + b of all steps is one matmul before the scan;
  the scan carries only h_{t-1} W_h; a hand-written backward pass (`lstm_scan`'s custom VJP) runs
  one small matmul per step and forms dW_h = sum_t h_{t-1}^T dz_t as one matmul after its scan.
  On XLA CPU a step of a [8, 64] LSTM is a few microseconds of work inside many tiny kernels, so
  what counts is the number of kernels per step: the fused LSTM trains 1.5-1.8x faster (measured
  in docs/performance.md). Outputs and gradients equal the literal ones to float rounding
  (tests/models/test_recurrent.py).
- "native": "fused" with both loops over time (forward, and the backward's dz recurrence) as one
  C++ call each on the CPU (`avemo/models/native/lstm_cpu.cc`, an XLA FFI handler compiled on
  first use): one kernel per loop instead of ~8 per step. On other platforms, in bfloat16, and
  where no C++ compiler is found it is "fused" (same parameters, same results to float rounding).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.recurrent import DenseParams  # the parameter holder OptimizedLSTMCell uses

from avemo.models import native

IMPLS = ("native", "fused", "flax")


class SequenceLSTM(nn.Module):
    """Dense (the "full connection layer" of Sec. 5.1) -> ReLU -> LSTM scanned over time.

    Maps [B, L, D] to hidden states [B, L, features]. `dense_features = 0` skips the dense layer.
    """

    features: int
    dense_features: int = 0
    dtype: jnp.dtype = jnp.float32
    impl: str = "native"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        if self.dense_features:
            x = nn.relu(nn.Dense(self.dense_features, dtype=self.dtype, name="input_dense")(x))
        if self.impl == "flax":
            cell = nn.OptimizedLSTMCell(self.features, dtype=self.dtype, name="cell")
            return nn.RNN(cell, name="rnn")(x)
        if self.impl not in ("fused", "native"):
            raise ValueError(f"SequenceLSTM impl must be one of {IMPLS}, got {self.impl!r}")
        w_i, w_h, b = _LSTMParams(self.features, name="cell")(x.shape[-1])
        w_i, w_h, b = (a.astype(self.dtype) for a in (w_i, w_h, b))
        if self.impl == "native" and _native_usable(x):  # batch-major; the kernel adds b
            return lstm_native(x, w_i, w_h, b)
        xw = jnp.einsum("bld,dk->lbk", x, w_i) + b  # every step's input projection, one matmul
        return jnp.swapaxes(lstm_scan(xw, w_h), 0, 1)


class _LSTMParams(nn.Module):
    """(W_i [D, 4H], W_h [H, 4H], b [4H]) in gate order i, f, g, o; the parameters of
    `nn.OptimizedLSTMCell(features)` (ii/if/ig/io kernels, hi/hf/hg/ho kernels and biases)."""

    features: int

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        cell = nn.OptimizedLSTMCell(self.features, parent=None)  # its initialisers
        x_like = jax.ShapeDtypeStruct((in_features,), jnp.float32)  # DenseParams reads the shape
        h_like = jax.ShapeDtypeStruct((self.features,), jnp.float32)
        w_i, w_h, b = [], [], []
        for gate in "ifgo":
            kernel, _ = DenseParams(
                self.features, use_bias=False, kernel_init=cell.kernel_init, name=f"i{gate}"
            )(x_like)
            w_i.append(kernel)
        for gate in "ifgo":
            kernel, bias = DenseParams(
                self.features, kernel_init=cell.recurrent_kernel_init, name=f"h{gate}"
            )(h_like)
            w_h.append(kernel)
            b.append(bias)
        return jnp.concatenate(w_i, -1), jnp.concatenate(w_h, -1), jnp.concatenate(b, -1)


# --------------------------------------------------------------- the scan and its backward pass


def _gate_scale(hidden: int, dtype) -> tuple[jax.Array, jax.Array]:
    """(scale, shift) with sigmoid(z * scale) * scale + shift = [σ(i), σ(f), tanh(g), σ(o)]:
    tanh(g) = 2 σ(2g) - 1, so the four activations are one elementwise pass over [B, 4H]. (In
    float32 the identity differs from tanh by ~1e-7 absolute; in bfloat16 by up to ~2^-8 absolute
    near g = 0, where a direct bfloat16 tanh errs relatively -- the same order for |g| ~ 1.)"""
    one = jnp.ones((hidden,), dtype)
    return (
        jnp.concatenate([one, one, 2 * one, one]),
        jnp.concatenate([0 * one, 0 * one, -one, 0 * one]),
    )


def _forward(xw: jax.Array, w_h: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """hs [L, B, H] from xw [L, B, 4H] (x_t W_i + b) and W_h [H, 4H]; also the activated gates
    [L, B, 4H] and cell states [L, B, H] the backward pass needs."""
    hidden = w_h.shape[0]
    scale, shift = _gate_scale(hidden, xw.dtype)

    def step(carry, x):
        c, h = carry
        a = jax.nn.sigmoid((x + h @ w_h) * scale) * scale + shift
        i, f, g, o = (a[:, k * hidden : (k + 1) * hidden] for k in range(4))
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (c, h), (a, c)

    zeros = jnp.zeros((xw.shape[1], hidden), xw.dtype)
    _, (gates, cells) = jax.lax.scan(step, (zeros, zeros), xw)
    return gates[..., 3 * hidden :] * jnp.tanh(cells), (gates, cells)


@jax.custom_vjp
def lstm_scan(xw: jax.Array, w_h: jax.Array) -> jax.Array:
    """LSTM hidden states [L, B, H] (zero initial state) from the projected inputs xw [L, B, 4H]
    (gate order i, f, g, o; bias included) and the recurrent kernel W_h [H, 4H]."""
    return _forward(xw, w_h)[0]


def _lstm_scan_fwd(xw, w_h):
    hs, (gates, cells) = _forward(xw, w_h)
    return hs, (hs, gates, cells, w_h)


def _lstm_scan_bwd(residuals, d_hs):
    hs, gates, cells, w_h = residuals
    dz = _backward_dz(d_hs.astype(gates.dtype), gates, cells, w_h)
    h_prev = jnp.concatenate([jnp.zeros_like(hs[:1]), hs[:-1]], 0)
    d_w_h = jnp.einsum("lbh,lbk->hk", h_prev, dz)  # one matmul for all steps
    return dz.astype(d_hs.dtype), d_w_h.astype(w_h.dtype)


def _backward_dz(d_hs, gates, cells, w_h):
    """Backpropagation through time: dz [L, B, 4H], the gradient of the pre-activations. With
    z_t the pre-activations and a_t = act(z_t):
    dh_t = dL/dh_t + dz_{t+1} W_h^T, dc_t = dc_{t+1} f_{t+1} + dh_t o_t (1 - tanh² c_t),
    dz_t = [dc_t g_t σ'(i), dc_t c_{t-1} σ'(f), dc_t i_t (1 - g_t²), dh_t tanh(c_t) σ'(o)].
    Everything but the recurrence is computed for all steps at once, outside the scan."""
    hidden = w_h.shape[0]
    i, f, g, o = (gates[..., k * hidden : (k + 1) * hidden] for k in range(4))
    zero = jnp.zeros_like(cells[:1])
    c_prev = jnp.concatenate([zero, cells[:-1]], 0)
    f_next = jnp.concatenate([f[1:], zero], 0)
    tanh_c = jnp.tanh(cells)
    coef = jnp.concatenate(
        [
            g * i * (1 - i),  # dz_i / dc
            c_prev * f * (1 - f),  # dz_f / dc
            i * (1 - g * g),  # dz_g / dc
            tanh_c * o * (1 - o),  # dz_o / dh
            o * (1 - tanh_c * tanh_c),  # dc / dh
            f_next,  # dc_t / dc_{t+1}
        ],
        -1,
    )
    w_t = w_h.T

    def step(carry, inputs):
        dz_next, dc_next = carry
        d_h_out, k = inputs
        dh = d_h_out + dz_next @ w_t
        dc = dc_next * k[:, 5 * hidden :] + dh * k[:, 4 * hidden : 5 * hidden]
        dz = jnp.concatenate([dc, dc, dc, dh], -1) * k[:, : 4 * hidden]
        return (dz, dc), dz

    init = (jnp.zeros(gates.shape[1:], gates.dtype), jnp.zeros_like(cells[0]))
    _, dz = jax.lax.scan(step, init, (d_hs, coef), reverse=True)
    return dz


lstm_scan.defvjp(_lstm_scan_fwd, _lstm_scan_bwd)


# ------------------------------------------------------- the same loops as native CPU kernels


def _native_usable(x: jax.Array) -> bool:
    """The C++ loops serve float32 (the kernels' type) where they can run (`native.available`)."""
    return x.dtype == jnp.float32 and native.available("lstm_cpu")


# The native path is batch-major ([B, L, ...], as the model holds sequences): the kernels read
# and write that layout, so no transposes surround them (the scan's time-major arrays cost
# ~0.2-0.4 ms of transposes per LSTM and pass in the frozen step's profile).


def _ffi_forward(xw, w_h, b):
    """(hs [B, L, H], gates [B, L, 4H], cells [B, L, H]) from xw [B, L, 4H] (x W_i, without the
    bias b, which the kernel adds): `_forward`'s loop over time in C++ (lstm_cpu.cc)."""
    batch, length, g = xw.shape[-3:]
    like = lambda *s: jax.ShapeDtypeStruct(xw.shape[:-3] + s, jnp.float32)  # noqa: E731
    return jax.ffi.ffi_call(
        "avemo_lstm_fwd",
        (like(batch, length, g // 4), like(batch, length, g), like(batch, length, g // 4)),
        vmap_method="broadcast_all",  # vmapped LSTMs (population members): one loop each
    )(xw, w_h, b)


def _ffi_backward_dz(d_hs, gates, cells, w_h):
    """`_backward_dz` on batch-major arrays, the loop over time in C++ (lstm_cpu.cc)."""
    return jax.ffi.ffi_call(
        "avemo_lstm_bwd",
        jax.ShapeDtypeStruct(gates.shape, jnp.float32),
        vmap_method="broadcast_all",
    )(d_hs, gates, cells, w_h)


def _time_major(*arrays):
    return tuple(jnp.swapaxes(a, -3, -2) for a in arrays)


def _scan_forward(xw, w_h, b):  # the same on other platforms (batch-major in and out)
    hs, (gates, cells) = _forward(*_time_major(xw + b), w_h)
    return _time_major(hs, gates, cells)


def _scan_backward_dz(d_hs, gates, cells, w_h):
    return _time_major(_backward_dz(*_time_major(d_hs, gates, cells), w_h))[0]


@jax.custom_vjp
def lstm_native(x: jax.Array, w_i: jax.Array, w_h: jax.Array, b: jax.Array) -> jax.Array:
    """The LSTM of Eq. (27) over x [B, L, D] (input kernel W_i [D, 4H], recurrent kernel W_h
    [H, 4H], bias b [4H]; zero initial state) -> hs [B, L, H], batch-major: `lstm_scan` of
    x W_i + b with its two loops over time as native calls on the CPU (float32, where the
    library builds; else, and when the program is lowered for another platform, the scan).
    The bias joins inside the loop; the input projection is inside the VJP, so that the
    backward pass forms both weight gradients in one matmul, [dW_i; dW_h] = [x_t; h_{t-1}]^T dz_t
    summed over all steps (one pass over dz instead of two, each with its own transpose: one
    [8, 150, 64] LSTM fwd + bwd 1.73 -> 1.17 ms)."""
    return _lstm_native_fwd(x, w_i, w_h, b)[0]


def _lstm_native_fwd(x, w_i, w_h, b):
    xw = jnp.einsum("bld,dk->blk", x, w_i)
    cpu = _ffi_forward if _native_usable(xw) else _scan_forward
    hs, gates, cells = jax.lax.platform_dependent(xw, w_h, b, cpu=cpu, default=_scan_forward)
    return hs, (x, hs, gates, cells, w_i, w_h)


def _lstm_native_bwd(residuals, d_hs):
    x, hs, gates, cells, w_i, w_h = residuals
    cpu = _ffi_backward_dz if _native_usable(gates) else _scan_backward_dz
    dz = jax.lax.platform_dependent(
        d_hs.astype(gates.dtype), gates, cells, w_h, cpu=cpu, default=_scan_backward_dz
    )
    h_prev = jnp.pad(hs[:, :-1], ((0, 0), (1, 0), (0, 0)))  # h_{t-1}, h_{-1} = 0
    d_w = jnp.einsum("bln,blk->nk", jnp.concatenate([x.astype(hs.dtype), h_prev], -1), dz)
    d_x = jnp.einsum("blk,dk->bld", dz, w_i.astype(dz.dtype))
    d = x.shape[-1]
    return (
        d_x.astype(x.dtype),
        d_w[:d].astype(w_i.dtype),
        d_w[d:].astype(w_h.dtype),
        dz.sum(axis=(0, 1)).astype(w_h.dtype),
    )


lstm_native.defvjp(_lstm_native_fwd, _lstm_native_bwd)
