"""Multimodal attention and the audio/video gate of Sec. 5.1 (Eq. 28-30)."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from flax.linen.recurrent import DenseParams  # nn.Dense's parameters without its matmul

from avemo.models import native

ATTENTION_IMPLS = ("native", "xla")


class SpatialAttention(nn.Module):
    """Attention over the positions of a face feature map, conditioned on h_t.

    Eq. (28): a_t = softmax(w_h^T tanh(W F_t + W_g h_t)) over the k positions of F_t.
    Eq. (29): c_t = sum_i a_ti F_ti.
    Eq. (30) adds c_t to h_t, so c_t must live in h_t's space: the positions are first projected
    to `context_features` by a linear map W_v (sum_i a_ti W_v F_ti = W_v sum_i a_ti F_ti, so this is
    Eq. 29 followed by a projection; it is computed in that cheaper order, W_v once per step
    instead of once per position -- the same parameters and, up to rounding, the same values).

    Inputs: feature_map [B, L', k, C], query [B, L, D]. With `frame_stride` s, step t uses map
    t // s (L' = ceil(L / s): the face CNN ran on every s-th step); W F is then computed once per
    map, not once per step, and the held maps are never materialised. Returns (context
    [B, L, context_features], weights [B, L, k]).
    """

    attention_features: int
    context_features: int
    dtype: jnp.dtype = jnp.float32
    # "native": Eq. (28)-(29) up to W_v -- keys W F, scores w_h^T tanh(W F + W_g h), softmax,
    # pooling -- as one C++ call per pass on the CPU (`attention_pool`,
    # avemo/models/native/attention_cpu.cc; float32); "xla": as written below. Same parameters,
    # values equal to float rounding; "native" is "xla" on accelerators, in bfloat16 and where no
    # C++ compiler is found.
    impl: str = "native"

    @nn.compact
    def __call__(
        self, feature_map: jax.Array, query: jax.Array, frame_stride: int = 1
    ) -> tuple[jax.Array, jax.Array]:
        b, length = query.shape[:2]
        maps, s = feature_map.shape[1], frame_stride
        if maps * s < length or (maps - 1) * s >= length:
            raise ValueError(f"{maps} feature maps at stride {s} do not cover {length} steps")
        if self.impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {self.impl!r}")
        native_pool = self.impl == "native" and _native_usable(jnp.dtype(self.dtype))
        q = nn.Dense(self.attention_features, use_bias=False, dtype=self.dtype, name="W_g")(query)
        if native_pool:  # W's bias joins the query: W F + b + W_g h, s/k as many additions
            kernel, bias = DenseParams(self.attention_features, name="W")(feature_map)
            q = q + bias
        else:
            keys = nn.Dense(self.attention_features, dtype=self.dtype, name="W")(feature_map)
        q = jnp.pad(q, ((0, 0), (0, maps * s - length), (0, 0)))
        q = q.reshape(b, maps, s, self.attention_features)  # step t = j * s + r
        if native_pool:
            w_h, _ = DenseParams(1, use_bias=False, name="w_h")(q)  # nn.Dense(1)'s kernel
            pooled, weights = attention_pool(
                feature_map.astype(jnp.float32), q.astype(jnp.float32), kernel, w_h[:, 0]
            )  # [B, L', s, C], [B, L', s, k]
            pooled = pooled.astype(feature_map.dtype)
        else:
            scores = nn.Dense(1, use_bias=False, dtype=self.dtype, name="w_h")(
                jnp.tanh(keys[:, :, None] + q[:, :, :, None, :])
            )[..., 0]  # [B, L', s, k]
            weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
            pooled = jnp.einsum("bjsk,bjkc->bjsc", weights.astype(feature_map.dtype), feature_map)
        context = nn.Dense(self.context_features, dtype=self.dtype, name="W_v")(pooled)
        context = context.reshape(b, maps * s, -1)[:, :length]
        weights = weights.reshape(b, maps * s, -1)[:, :length]
        return context, weights


def _native_usable(dtype) -> bool:
    return dtype == jnp.float32 and native.available("attention_cpu")


def _pool_xla(fmap, q, kernel, w):
    """Eq. (28)-(29) as written: fmap [..., R, K, C], q [..., R, S, A], kernel [C, A], w [A] ->
    pooled [..., R, S, C], weights [..., R, S, K]."""
    keys = fmap @ kernel
    scores = jnp.einsum("...ska,a->...sk", jnp.tanh(keys[..., None, :, :] + q[..., None, :]), w)
    weights = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("...sk,...kc->...sc", weights, fmap), weights


def _pool_ffi(fmap, q, kernel, w):
    return jax.ffi.ffi_call(
        "avemo_attention_pool",
        (
            jax.ShapeDtypeStruct(q.shape[:-1] + fmap.shape[-1:], jnp.float32),
            jax.ShapeDtypeStruct(q.shape[:-1] + fmap.shape[-2:-1], jnp.float32),
        ),
        vmap_method="broadcast_all",
    )(fmap, q, kernel, w)


# W's and w's gradients come back as this many partial sums, each over a fixed range of rows
# (summed here): parallel work for the kernel, a sum that does not depend on the thread count.
_CHUNKS = 32


def _pool_bwd_ffi(fmap, q, kernel, w, weights, d_pooled, d_weights, fmap_grad):
    chunks = min(_CHUNKS, math.prod(q.shape[:-2]))
    f32 = jnp.float32
    d_fmap, d_q, d_kernel, d_w = jax.ffi.ffi_call(
        "avemo_attention_pool_bwd",
        (
            jax.ShapeDtypeStruct(fmap.shape if fmap_grad else (0,), f32),  # [0]: not wanted
            jax.ShapeDtypeStruct(q.shape, f32),
            jax.ShapeDtypeStruct((chunks, *kernel.shape), f32),
            jax.ShapeDtypeStruct((chunks, *w.shape), f32),
        ),
        vmap_method="broadcast_all",
    )(fmap, q, kernel, w, weights, d_pooled, d_weights)
    return (d_fmap if fmap_grad else None), d_q, d_kernel.sum(0), d_w.sum(0)


def _pool_bwd_xla(fmap, q, kernel, w, weights, d_pooled, d_weights, fmap_grad):
    if d_weights.size == 0:
        d_weights = jnp.zeros_like(weights)
    d_fmap, *rest = jax.vjp(_pool_xla, fmap, q, kernel, w)[1]((d_pooled, d_weights))
    return (d_fmap if fmap_grad else None), *rest


def _pool(fmap, q, kernel, w):
    cpu = _pool_ffi if _native_usable(fmap.dtype) else _pool_xla
    return jax.lax.platform_dependent(fmap, q, kernel, w, cpu=cpu, default=_pool_xla)


@jax.custom_vjp
def attention_pool(
    fmap: jax.Array, q: jax.Array, kernel: jax.Array, w: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Eq. (28)-(29) without W_v: keys = fmap W (W = `kernel`), scores w^T tanh(keys + q),
    weights = softmax over the K positions, pooled = weights fmap. fmap [..., R, K, C] (the K
    positions of a map), q [..., R, S, A] (W_g h + W's bias of the S steps that share the map),
    kernel [C, A], w [A] -> (pooled [..., R, S, C], weights [..., R, S, K]); one C++ call per
    pass on the CPU (float32, avemo/models/native/attention_cpu.cc), XLA on other platforms.
    The backward pass skips fmap's gradient when fmap does not depend on what is differentiated
    (a frozen face branch) and the weights' part when nothing downstream uses them."""
    return _pool(fmap, q, kernel, w)


@flax.struct.dataclass
class _PoolResiduals:
    arrays: tuple
    fmap_grad: bool = flax.struct.field(pytree_node=False)  # static: fmap.perturbed


def _attention_pool_fwd(fmap, q, kernel, w):  # symbolic_zeros: CustomVJPPrimal arguments
    values = tuple(x.value for x in (fmap, q, kernel, w))
    pooled, weights = _pool(*values)
    return (pooled, weights), _PoolResiduals((*values, weights), fmap.perturbed)


def _attention_pool_bwd(res, cotangents):
    d_pooled, d_weights = cotangents
    fmap, q, kernel, w, weights = res.arrays
    zero = jax.custom_derivatives.SymbolicZero
    if isinstance(d_pooled, zero):
        d_pooled = jnp.zeros(weights.shape[:-1] + fmap.shape[-1:], fmap.dtype)
    if isinstance(d_weights, zero):  # the weights feed nothing: [0], no part of the gradient
        d_weights = jnp.zeros((0,), weights.dtype)
    cpu = _pool_bwd_ffi if _native_usable(fmap.dtype) else _pool_bwd_xla
    return jax.lax.platform_dependent(
        fmap, q, kernel, w, weights, d_pooled, d_weights,
        cpu=functools.partial(cpu, fmap_grad=res.fmap_grad),
        default=functools.partial(_pool_bwd_xla, fmap_grad=res.fmap_grad),
    )  # fmt: skip


attention_pool.defvjp(_attention_pool_fwd, _attention_pool_bwd, symbolic_zeros=True)


class AudioGate(nn.Module):
    """beta_t of Eq. (30): the weight of the audio features against the video context.

    The paper does not say how beta_t is computed. Modes (config `model.gate`):
      learned: beta_t = sigmoid(w^T [h_t; c_t] + b), a per-step gate (default);
      scalar:  one learned beta for all steps (beta = sigmoid(b));
      fixed:   beta = `fixed_value`, no parameters (the "no attention" ablation).
    `availability` [B, L, 2] (m_t, n_t), when given to the learned gate, joins its input:
    beta_t = sigmoid(w^T [h_t; c_t; m_t; n_t] + b) -- the signals Eq. (31) asks beta to follow,
    which the states alone carry only indirectly (config `model.gate_inputs`).
    `outputs` > 1: one gate per output dimension from the same inputs (its own row of w_beta,
    its own b_beta), e.g. arousal read mostly from the voice while valence is read from the face.
    Returns beta [B, L] (outputs = 1) or [B, L, outputs] in (0, 1).
    """

    mode: str = "learned"
    fixed_value: float = 0.5
    dtype: jnp.dtype = jnp.float32
    # Gates per step: 1 (Eq. 30's one beta_t, returned [B, L]) or one per output dimension
    # (`model.gate_per_output`, returned [B, L, outputs]).
    outputs: int = 1

    @nn.compact
    def __call__(
        self, audio: jax.Array, context: jax.Array, availability: jax.Array | None = None
    ) -> jax.Array:
        shape = audio.shape[:-1] + (self.outputs,)
        if self.mode == "learned":
            inputs = [audio, context]
            if availability is not None:
                inputs.append(availability.astype(audio.dtype))
            logits = nn.Dense(self.outputs, dtype=self.dtype, name="w_beta")(
                jnp.concatenate(inputs, axis=-1)
            )
        elif self.mode == "scalar":
            shape_b = () if self.outputs == 1 else (self.outputs,)
            b_beta = self.param("b_beta", nn.initializers.zeros, shape_b)
            logits = jnp.broadcast_to(jnp.reshape(b_beta, (-1,)), shape)
        elif self.mode == "fixed":
            logits = None
        else:
            raise ValueError(f"unknown gate mode {self.mode!r}")
        beta = (
            jnp.full(shape, self.fixed_value, jnp.float32)
            if logits is None
            else jax.nn.sigmoid(logits.astype(jnp.float32))
        )
        return beta[..., 0] if self.outputs == 1 else beta


FUSION_COMBINES = ("sum", "concat")


def fuse(
    audio: jax.Array, context: jax.Array, audio_gate: jax.Array, combine: str = "sum"
) -> jax.Array:
    """Eq. (30): beta_t h_t + (1 - beta_t) c_t ("sum", as written).

    "concat": [beta_t h_t; (1 - beta_t) c_t], the same gated streams side by side. Eq. (30) adds
    the audio state and the face context coordinate by coordinate, so everything after it has to
    tell the voice's contribution from the face's inside one vector (the voice carries mostly
    arousal, the face mostly valence); side by side, the layers after the gate can read each
    dimension from the stream that carries it while beta still scales each stream (a stream
    with beta -> 0 or 1 - beta -> 0 contributes nothing either way).
    """
    beta = audio_gate[..., None].astype(audio.dtype)
    if combine == "sum":
        return beta * audio + (1.0 - beta) * context
    if combine == "concat":
        return jnp.concatenate([beta * audio, (1.0 - beta) * context], axis=-1)
    raise ValueError(f"fusion combine must be one of {FUSION_COMBINES}, got {combine!r}")
