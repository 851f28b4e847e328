"""Fast forms of standard layers whose outputs equal the literal ones (tested side by side).

Max-pooling: `flax.linen.max_pool` lowers to `reduce_window`, whose gradient XLA turns into a
`select_and_scatter`; on XLA CPU that gradient costs more than the convolution before it. The same
pooling written as a reshape, elementwise maxima over the inner window axis and a max reduction
over the outer one (non-overlapping windows), or as an elementwise maximum of shifted slices
(overlapping windows), has a gradient of plain fused elementwise ops. The forward
values are identical. The gradient of non-overlapping windows is `select_and_scatter`'s, ties
included (all of a window's gradient to its first maximum: constant inputs such as the zeroed
frames of absent faces tie everywhere); that of overlapping windows differs only where two inputs
of one window tie exactly at the maximum (split between them instead of given to the first).

`alexnet.ConvBlock`'s fast path applies ReLU (and the conv bias) after the pooling: max-pooling
and ReLU commute (ReLU is monotone), so the result equals ReLU -> pool, with the elementwise ReLU
on a quarter of the values.

Convolution + pooling blocks: `phase_conv_pool` (one convolution yielding the pooling's four
phases, for a grey first layer) and `conv_pool` (the block as native CPU calls, forward and
backward, for blocks of few channels), each equal to the literal layers to float rounding.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from avemo.models import native


def _pads(shape: Sequence[int], window: Sequence[int], strides: Sequence[int], padding):
    if isinstance(padding, str):
        return lax.padtype_to_pads(shape, window, strides, padding)
    return [tuple(p) for p in padding]


def _window_position(shape: Sequence[int], axes: tuple[int, ...]) -> jax.Array:
    """Each element's position inside its window, row-major over the window `axes`."""
    k = jnp.zeros((), jnp.int32)
    for axis in axes:
        k = k * shape[axis] + lax.broadcasted_iota(jnp.int32, tuple(shape), axis)
    return k


def _inner_window_max(x: jax.Array, axes: tuple[int, ...], want_first: bool = True):
    """The maximum over the window `axes` but the first (outermost), and the first row-major
    position inside those axes holding it (0 without inner axes; not meaningful unless
    `want_first`), and the number of those positions.

    One window axis at a time, innermost first, as elementwise maxima of the axis' slices: the
    innermost window axis sits next to the channels, so each slice is a run of contiguous values
    and XLA CPU vectorises the chain (a max reduction over non-minor axes it emits one output at
    a time). Ties: a later slice replaces the running maximum only when strictly greater, so the
    first position wins, within a row and between rows (`select_and_scatter`'s rule).
    """
    y, first, inner = x, None, 1  # inner: window positions per step of the current axis
    for axis in sorted(axes[1:], reverse=True):
        size = y.shape[axis]
        ys = [lax.index_in_dim(y, i, axis, False) for i in range(size)]
        # each slice's position in the window axes done so far (this one and those inside it)
        ps = [
            i * inner + (0 if first is None else lax.index_in_dim(first, i, axis, False))
            for i in range(size)
        ]
        m, p = ys[0], ps[0]
        for i in range(1, size):
            later = ys[i] > m
            m = jnp.where(later, ys[i], m)
            p = jnp.where(later, ps[i], p) if want_first else None
        y = m
        first = jnp.broadcast_to(jnp.asarray(p, jnp.int32), m.shape) if want_first else None
        inner *= size
    return y, (0 if first is None else first), inner


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _block_max(x: jax.Array, axes: tuple[int, ...], sizes: tuple[int, ...]) -> jax.Array:
    """The maximum over `axes` (the window axes, of `sizes`, of a reshaped, non-overlapping
    pooling)."""
    y, _, _ = _inner_window_max(x, axes, want_first=False)
    return y.max(axis=axes[0])


def _block_max_fwd(x, axes, sizes):
    # The backward pass needs only where each window's maximum was: the first position (row-major
    # in the window) holding it, kept as one small integer per output -- not the full-size input,
    # and no tie count for the backward pass to reduce (on XLA CPU the costliest part of the
    # pooling's gradient in the profile).
    # The inner window axes elementwise, the outermost by reductions: a reduction is never fused
    # into its consumers, so the positions are computed here, once, and stored. (Computed all
    # elementwise, XLA fused the positions' computation into the backward pass's transposed
    # fusions, reading the full-size input there in transposed order: default step 0.205 ->
    # 0.245 s.) An integer min reduction: XLA CPU fuses the select into it.
    m, p, inner = _inner_window_max(x, axes)
    outer = axes[0]
    y = m.max(axis=outer)
    k = lax.broadcasted_iota(jnp.int32, m.shape, outer) * inner + p
    size = math.prod(sizes)
    first = jnp.where(m == jnp.expand_dims(y, outer), k, size).min(axis=outer)
    return y, first.astype(jnp.int8 if size < 128 else jnp.int32)


def _block_max_bwd(axes, sizes, first, g):
    # `select_and_scatter`'s rule, the gradient of `nn.max_pool` (`reduce_window`): each window's
    # gradient goes, all of it, to the first position holding its maximum.
    shape = list(g.shape)
    for axis, size in zip(axes, sizes, strict=True):
        shape.insert(axis, size)
    picked = _window_position(shape, axes) == jnp.expand_dims(first, axes).astype(jnp.int32)
    return (jnp.where(picked, jnp.expand_dims(g, axes), jnp.zeros((), g.dtype)),)


_block_max.defvjp(_block_max_fwd, _block_max_bwd)


def _axis_slices(x: jax.Array, k: int, s: int, axis: int) -> list[jax.Array]:
    out = (x.shape[axis] - k) // s + 1
    return [lax.slice_in_dim(x, i, i + (out - 1) * s + 1, stride=s, axis=axis) for i in range(k)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _axis_window_max(x: jax.Array, k: int, s: int, axis: int) -> jax.Array:
    """The maximum of each length-`k`, stride-`s` window along one axis of a padded input."""
    return functools.reduce(jnp.maximum, _axis_slices(x, k, s, axis))


def _axis_window_max_fwd(x, k, s, axis):
    y = _axis_window_max(x, k, s, axis)
    return y, (x, y)


def _axis_window_max_bwd(k, s, axis, residuals, g):
    # Each window's gradient goes to the inputs equal to its maximum, split evenly between
    # ties (as for a max reduction); computed from the input and the maximum in one pass,
    # instead of the k - 1 full-size masks that a chain of elementwise maxima keeps.
    x, y = residuals
    masks = [part == y for part in _axis_slices(x, k, s, axis)]
    count = functools.reduce(jnp.add, [m.astype(x.dtype) for m in masks])
    share = g / count
    zero = jnp.zeros((), x.dtype)
    size = x.shape[axis]
    dx = None
    for i, mask in enumerate(masks):
        part = jnp.where(mask, share, zero)
        high = size - (i + (part.shape[axis] - 1) * s + 1)
        config = [(0, 0, 0)] * x.ndim
        config[axis] = (i, high, s - 1)  # the transpose of the strided slice
        part = lax.pad(part, zero, config)
        dx = part if dx is None else dx + part
    return (dx,)


_axis_window_max.defvjp(_axis_window_max_fwd, _axis_window_max_bwd)


def max_pool(
    x: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
) -> jax.Array:
    """`flax.linen.max_pool` over the spatial axes of [N, *spatial, C], same arguments and values.

    Non-overlapping VALID windows (window == stride): crop + reshape + max over the window axes.
    Otherwise: pad with -inf, then per spatial axis the maximum of the `k` strided slices.
    Both have a hand-written gradient: non-overlapping windows send each window's gradient to
    its first maximum (as `nn.max_pool`), from the positions kept by the forward pass;
    overlapping ones split it evenly between the inputs that tie at the maximum, computed in the
    backward pass from the input and the output.
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
        return _block_max(x, tuple(2 + 2 * i for i in range(len(spatial))), window_shape)
    if any(p != (0, 0) for p in pads):
        neg = jnp.array(-jnp.inf, x.dtype)
        x = jnp.pad(x, [(0, 0)] + list(pads) + [(0, 0)], constant_values=neg)
    for axis, (k, s) in enumerate(zip(window_shape, strides, strict=True), start=1):
        x = _axis_window_max(x, k, s, axis)
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


def patch_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    **unused,
) -> jax.Array:
    """`lax.conv_general_dilated` of an NHWC input and an HWIO kernel, as patches + one matmul.

    The k_h * k_w shifted (strided) views of the padded input are stacked along the channels,
    [N, H', W', k_h * k_w * C], in the order of the kernel reshaped to [k_h * k_w * C, F], and
    multiplied by it: the same sums as the convolution (summed in another order, so equal to
    rounding). For convolutions with few input channels (an RGB or grey face, a one-channel
    spectrogram) cuDNN's and XLA CPU's convolution kernels use the matrix units poorly; the
    matmul's contraction of k_h * k_w * C is a better shape. A drop-in for flax's
    `nn.Conv(conv_general_dilated=...)`: the module, its parameters and their names stay.
    """
    ndim = lhs.ndim - 2
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    if ndim != 2 or (dimension_numbers is not None and dimension_numbers != numbers):
        raise ValueError("patch_conv supports 2-D NHWC inputs with HWIO kernels only")
    if (
        feature_group_count != 1
        or any(d != 1 for d in (lhs_dilation or ()))
        or any(d != 1 for d in (rhs_dilation or ()))
    ):
        raise ValueError("patch_conv supports no grouping and no dilation")
    kh, kw, c, f = rhs.shape
    sh, sw = window_strides
    pads = _pads(lhs.shape[1:3], (kh, kw), (sh, sw), padding)
    x = jnp.pad(lhs, [(0, 0), *pads, (0, 0)])
    # the pooling's strided window views, per axis: tap (i, j) in the kernel's row-major order
    taps = [t for row in _axis_slices(x, kh, sh, 1) for t in _axis_slices(row, kw, sw, 2)]
    patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    return jnp.dot(patches, rhs.reshape(kh * kw * c, f), precision=precision)


def conv_function(in_channels: int, patch_channels: int):
    """The convolution `nn.Conv` should use for an input of `in_channels`: `patch_conv` when
    `in_channels <= patch_channels` (`model.patch_conv_channels`), else flax's default (None)."""
    return patch_conv if in_channels <= patch_channels else None


# ------------------------------------------- convolution + 2x2 pooling as the pooling's phases


def phase_conv_applies(x_shape: Sequence[int], kernel_size: int, stride: int) -> bool:
    """Whether `phase_conv_pool` computes this block: stride 1, an odd square kernel (SAME
    padding), even spatial sizes (the 2x2/2 pooling then sees every output)."""
    return stride == 1 and kernel_size % 2 == 1 and x_shape[1] % 2 == 0 and x_shape[2] % 2 == 0


def phase_conv_pool(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """max_pool_2x2/2(conv(x, kernel, stride 1, SAME)) for NHWC `x` and an odd k x k HWIO kernel.

    The convolution's output at the four positions of each pooling window -- its four *phases*
    -- is one convolution of the space-to-depth input (2 x 2 blocks of the padded input stacked
    along the channels, [N, (H+k-1)/2, (W+k-1)/2, 4C]) with a (k+1)/2 x (k+1)/2 kernel of
    [4C, 4F]: phase (i, j)'s k x k kernel sits at offset (i, j) of a (k+1) x (k+1) window, zeros
    elsewhere. The pooling is then a maximum over four contiguous groups of F channels, and
    the weight gradient is one matmul of the input's patches and the output gradient as they
    lie in memory. (The convolution's own weight gradient on XLA CPU transposes
    its full-size output gradient to [H, W, N, F] and its input to [C, H, W, N]: for the
    default's first layer -- 304 grey 64 x 64 frames, 8 channels -- the two transposes and the
    strided pooling took more time than the convolution itself; docs/performance.md.) Same
    parameters, the same sums in another order (outputs equal to rounding; ties in the pooling
    go to the first position of the window, row-major, as `nn.max_pool`'s gradient does).
    (`conv_pool` computes the same block as native calls on the CPU.)
    """
    _check_conv_pool(x, kernel, "phase_conv_pool")
    return _block_max(_phases(x, kernel), (3,), (4,))


def _check_conv_pool(x: jax.Array, kernel: jax.Array, name: str) -> None:
    k, k2, c_in, _ = kernel.shape
    if k != k2 or c_in != x.shape[-1] or not phase_conv_applies(x.shape[-4:], k, 1):
        raise ValueError(f"{name}: input {x.shape} and kernel {kernel.shape} do not fit")


def _phases(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The stride-1 SAME convolution's output at the four positions of each 2x2 pooling window,
    [N, H/2, W/2, 4, F] (window position 2 di + dj), as one VALID convolution of the
    space-to-depth input (`phase_conv_pool`)."""
    n, h, w, c = x.shape
    k, _, _, f = kernel.shape
    p, q = (k - 1) // 2, (k + 1) // 2
    xp = jnp.pad(x, [(0, 0), (p, p), (p, p), (0, 0)])
    hp, wp = (h + k - 1) // 2, (w + k - 1) // 2
    s2d = xp.reshape(n, hp, 2, wp, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, 4 * c)
    phases = [
        jnp.pad(kernel, [(i, 1 - i), (j, 1 - j), (0, 0), (0, 0)]) for i in (0, 1) for j in (0, 1)
    ]
    # [k+1, k+1, C, 4, F] -> rows (2 di + i', 2 dj + j') -> [q, q, (i', j', C), (phase, F)]
    big = jnp.stack(phases, axis=3).reshape(q, 2, q, 2, c, 4, f)
    big = big.transpose(0, 2, 1, 3, 4, 5, 6).reshape(q, q, 4 * c, 4 * f)
    # (The maximum over the phases is taken by reductions, `_block_max`: computed elementwise,
    # XLA fused it into its consumers -- the next layer's transposed weight-gradient input among
    # them -- and recomputed it there from the four phases, in transposed order.)
    return _s2d_conv(s2d, big).reshape(n, h // 2, w // 2, 4, f)


def _conv_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(
        x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@jax.custom_vjp
def _s2d_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A VALID stride-1 convolution whose weight gradient is one matmul of patches."""
    return _conv_valid(x, kernel)


def _s2d_conv_fwd(x, kernel):
    return _conv_valid(x, kernel), (x, kernel)


def _s2d_conv_bwd(residuals, g):
    x, kernel = residuals
    kh, kw, c, f = kernel.shape
    _, h, w, _ = g.shape
    # dK[a, b, c, f] = sum_{n,i,j} x[n, i+a, j+b, c] g[n, i, j, f]: the patches [NHW, kh kw C]
    # (in the kernel's row order) times g [NHW, F], contracted over the rows as both lie.
    taps = [x[:, a : a + h, b : b + w, :] for a in range(kh) for b in range(kw)]
    patches = jnp.concatenate(taps, axis=-1).reshape(-1, kh * kw * c)
    d_kernel = jnp.dot(patches.T, g.reshape(-1, f)).reshape(kernel.shape)
    _, input_vjp = jax.vjp(lambda v: _conv_valid(v, kernel), x)  # unused (DCE'd) for an image
    return input_vjp(g)[0], d_kernel.astype(kernel.dtype)


_s2d_conv.defvjp(_s2d_conv_fwd, _s2d_conv_bwd)


# ----------------------------------------- the convolution + pooling block as native CPU calls

# The native calls are direct convolutions (vectors over channels, no matmul blocking): they beat
# XLA's convolution + pooling for few input channels and lose for many. Block fwd + bwd
# (input gradient included), 304 frames, one run each on the 2-core CPU, XLA / native time:
# the default's 1 -> 8 at 64 x 64 1.8x (no input gradient), 8 -> 16 at 32 x 32 2.5x, 16 -> 32
# at 16 x 16 1.3x; 16 -> 32 at 32 x 32 1.60x, 16 -> 64 at 16 x 16 1.48x; 32 -> 32 at
# 16 x 16 0.60x, 32 -> 64 at 16 x 16 0.69x, 64 -> 128 0.65x, 96 -> 256 (the paper's conv2, 64
# frames of 28 x 28) 0.60x. So `conv_pool_suits`: at most 16 input and 64 output channels.
CONV_POOL_MAX_CHANNELS = (16, 64)


def conv_pool_suits(in_channels: int, out_channels: int) -> bool:
    """Whether `conv_pool`'s native calls are the faster form of a block of these channels."""
    return in_channels <= CONV_POOL_MAX_CHANNELS[0] and out_channels <= CONV_POOL_MAX_CHANNELS[1]


# Fixed chunks of frames of the native backward pass's kernel gradient (summed here): the sum
# does not depend on the number of threads.
_CONV_POOL_CHUNKS = 16


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_pool(x: jax.Array, kernel: jax.Array, phase: bool = False) -> jax.Array:
    """max_pool_2x2/2(conv(x, kernel, stride 1, SAME)) for NHWC `x` (H, W even) and an odd k x k
    HWIO kernel (no bias: add it after the pooling), with every pass as one native call on the
    CPU in float32 (`avemo/models/native/conv_pool_cpu.cc`): nothing of the convolution's full
    size exists in memory, forward or backward. The backward pass gives the kernel's gradient
    from the input and each window's maximum position (int8, the first on ties, as
    `nn.max_pool`'s gradient), and the input's gradient as a separate call that is left out of
    the program when nothing asks for it (an image). Elsewhere (other platforms, bfloat16, no
    C++ compiler) XLA's ops: the convolution and the pooling, or `phase_conv_pool`'s phase form
    with `phase` (the grey first layer on the CPU). Values equal to float rounding either way."""
    return _conv_pool_fwd(x, kernel, phase)[0]


def _pre_pool(x: jax.Array, kernel: jax.Array, phase: bool) -> jax.Array:
    """The convolution's output, laid out for the pooling: [N, H/2, W/2, 4, F] (the phase form)
    or [N, H/2, 2, W/2, 2, F]; linear in x and in the kernel."""
    if phase:
        return _phases(x, kernel)
    y = lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    n, h, w, f = y.shape
    return y.reshape(n, h // 2, 2, w // 2, 2, f)


def _pool_axes(phase: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    # the window axes of `_pre_pool`'s layout; either way a window's position is 2 di + dj
    return ((3,), (4,)) if phase else ((2, 4), (2, 2))


def _conv_pool_native_usable(x: jax.Array, kernel: jax.Array) -> bool:
    return (
        x.dtype == jnp.float32 and kernel.dtype == jnp.float32 and native.available("conv_pool_cpu")
    )


def _xla_conv_pool(x, kernel, phase):
    return _block_max_fwd(_pre_pool(x, kernel, phase), *_pool_axes(phase))


def _ffi_conv_pool(x, kernel):
    n, h, w, _ = x.shape[-4:]
    shape = x.shape[:-4] + (n, h // 2, w // 2, kernel.shape[-1])
    return jax.ffi.ffi_call(
        "avemo_conv_pool",
        (jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape, jnp.int8)),
        vmap_method="broadcast_all",  # vmapped (population members): leading dimensions
    )(x, kernel)


def _conv_pool_fwd(x, kernel, phase):
    _check_conv_pool(x, kernel, "conv_pool")
    xla = functools.partial(_xla_conv_pool, phase=phase)
    cpu = _ffi_conv_pool if _conv_pool_native_usable(x, kernel) else xla
    pooled, first = lax.platform_dependent(x, kernel, cpu=cpu, default=xla)
    return pooled, (x, kernel, first)


def _xla_conv_pool_bwd(x, kernel, first, g, phase):
    axes, sizes = _pool_axes(phase)
    (d_pre,) = _block_max_bwd(axes, sizes, first, g)  # all of a window's gradient to its first max
    _, vjp = jax.vjp(lambda x, k: _pre_pool(x, k, phase), x, kernel)
    return vjp(d_pre)


def _ffi_conv_pool_bwd(x, kernel, first, g):
    chunks = min(_CONV_POOL_CHUNKS, x.shape[-4])
    parts = jax.ffi.ffi_call(
        "avemo_conv_pool_bwd",
        jax.ShapeDtypeStruct(x.shape[:-4] + (chunks,) + kernel.shape[-4:], jnp.float32),
        vmap_method="broadcast_all",
    )(x, first, g)
    d_x = jax.ffi.ffi_call(  # a call of its own: dropped when x needs no gradient
        "avemo_conv_pool_bwd_x",
        jax.ShapeDtypeStruct(x.shape, jnp.float32),
        vmap_method="broadcast_all",
    )(first, g, kernel)
    return d_x, parts.sum(axis=-5)


def _conv_pool_bwd(phase, residuals, g):
    x, kernel, first = residuals
    xla = functools.partial(_xla_conv_pool_bwd, phase=phase)
    cpu = _ffi_conv_pool_bwd if _conv_pool_native_usable(x, kernel) else xla
    d_x, d_kernel = lax.platform_dependent(x, kernel, first, g, cpu=cpu, default=xla)
    return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype)


conv_pool.defvjp(_conv_pool_fwd, _conv_pool_bwd)
