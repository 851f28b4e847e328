"""The native LSTM (its two loops over time as C++ calls on the CPU, avemo/models/native) equals
the fused scan it replaces: outputs, gradients, under vmap, inside the whole model; the program
really holds the native calls; and without a compiler the model falls back to the scan.

On a machine without a C++ compiler these tests skip, unless AVEMO_REQUIRE_NATIVE=1 (CI)."""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avemo.models import native
from avemo.models.bimodal import BimodalModel
from avemo.models.recurrent import SequenceLSTM, lstm_native, lstm_scan
from tests.models.model_pairs import assert_same_train_step
from tests.models.test_fusion_remedies import _batch

if native.library("lstm_cpu") is None:
    if os.environ.get("AVEMO_REQUIRE_NATIVE") == "1":
        raise RuntimeError("AVEMO_REQUIRE_NATIVE=1 but the native LSTM kernel did not build")
    pytest.skip("no native LSTM kernel on this machine", allow_module_level=True)


def _close_trees(a, b, rtol, atol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# hidden 6 (4H = 24 < one 32-column tile), 10 (a tile and a tail), 64 (the default's); batch rows
# 1, 5, 8, 13 (the 8- and 4-row blocks and single rows of the kernels' matmul)
@pytest.mark.parametrize(
    "length,batch,hidden", [(1, 1, 6), (2, 5, 10), (37, 8, 64), (23, 13, 10), (150, 8, 64)]
)
def test_native_loops_equal_the_scan_outputs_and_gradients(length, batch, hidden):
    k = jax.random.split(jax.random.key(length * 100 + batch), 3)
    xw = jax.random.normal(k[0], (batch, length, 4 * hidden)) * 2.0  # saturating gates too
    w_h = jax.random.normal(k[1], (hidden, 4 * hidden)) * 0.3
    weight = jax.random.normal(k[2], (batch, length, hidden)) * jnp.arange(1, length + 1)[:, None]

    def scan(xw, w):  # the time-major scan, batch-major in and out
        return jnp.swapaxes(lstm_scan(jnp.swapaxes(xw, 0, 1), w), 0, 1)

    def loss(f):  # every step's output weighed differently
        return lambda xw, w: jnp.sum(f(xw, w) * weight)

    bias = jnp.linspace(-1.0, 1.0, 4 * hidden)

    def native_lstm(xw, w):  # x = xw - b through W_i = I; the kernel adds b back
        return lstm_native(xw - bias, jnp.eye(4 * hidden), w, bias)

    np.testing.assert_allclose(jax.jit(native_lstm)(xw, w_h), jax.jit(scan)(xw, w_h), atol=2e-6)
    g_native = jax.jit(jax.grad(loss(native_lstm), (0, 1)))(xw, w_h)
    g_scan = jax.jit(jax.grad(loss(scan), (0, 1)))(xw, w_h)
    for a, b in zip(g_native, g_scan, strict=True):  # float rounding over L steps: relative to
        # the gradient's scale (both differ from a float64 scan by ~1e-6 of it at L = 150)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6 * float(jnp.abs(b).max()))


@pytest.mark.parametrize("length,batch,d,hidden", [(1, 1, 3, 6), (17, 5, 7, 10), (150, 8, 64, 64)])
def test_native_sequence_lstm_equals_the_fused_one(length, batch, d, hidden):
    """`lstm_native` (the input projection inside the VJP: dW_i and dW_h from one matmul)
    against the fused scan, through SequenceLSTM's parameters."""
    x = jax.random.normal(jax.random.key(length + d), (batch, length, d))
    nat, fused = SequenceLSTM(hidden, impl="native"), SequenceLSTM(hidden, impl="fused")
    v = fused.init(jax.random.key(0), x)
    weight = jax.random.normal(jax.random.key(1), (batch, length, hidden))

    def grads(model):
        return jax.jit(jax.grad(lambda v, x: jnp.sum(model.apply(v, x) * weight), (0, 1)))(v, x)

    np.testing.assert_allclose(nat.apply(v, x), fused.apply(v, x), atol=2e-6)
    for a, b in zip(jax.tree.leaves(grads(nat)), jax.tree.leaves(grads(fused)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6 * float(jnp.abs(b).max()))


def test_the_program_holds_the_native_calls_and_not_the_scan():
    """Fails if "native" silently became the scan (e.g. the dispatch or the kernel broke)."""
    x = jax.random.normal(jax.random.key(1), (2, 9, 5))
    model = SequenceLSTM(4, 3, impl="native")
    v = model.init(jax.random.key(0), x)
    hlo = jax.jit(jax.grad(lambda v: jnp.sum(model.apply(v, x)))).lower(v).as_text()
    assert "avemo_lstm_fwd" in hlo and "avemo_lstm_bwd" in hlo
    fused_hlo = jax.jit(lambda v: SequenceLSTM(4, 3, impl="fused").apply(v, x)).lower(v).as_text()
    assert "avemo_lstm" not in fused_hlo


def test_native_lstm_under_vmap_population_members():
    x = jax.random.normal(jax.random.key(1), (3, 4, 11, 5))  # 3 members
    nat, fused = SequenceLSTM(8, impl="native"), SequenceLSTM(8, impl="fused")
    members = jax.vmap(lambda k: fused.init(k, x[0]))(jax.random.split(jax.random.key(0), 3))

    def grads(model):
        f = jax.vmap(jax.value_and_grad(lambda v, xi: jnp.sum(jnp.sin(model.apply(v, xi)))))
        return jax.jit(f)(members, x)

    _close_trees(grads(nat), grads(fused), rtol=1e-4, atol=1e-5)


def test_model_with_native_lstms_equals_the_fused_model():
    """All four LSTMs of the fusion model (audio, face, face context, output) in a train step's
    loss and gradient."""
    batch = _batch(length=9)
    kw = dict(
        mode="fusion", conv_features=(4, 8, 8), fc_features=(8, 8), lstm_features=8,
        audio_dense_features=8, attention_features=8, output_lstm_features=8,
        video_lstm_features=8, face_context_lstm=True, attention_query="face",
        modality_heads=True,
    )  # fmt: skip
    nat, fused = BimodalModel(lstm_impl="native", **kw), BimodalModel(lstm_impl="fused", **kw)
    assert_same_train_step(nat, fused, batch)


def test_bfloat16_uses_the_scan():
    x = jax.random.normal(jax.random.key(1), (2, 6, 5))
    model = SequenceLSTM(4, dtype=jnp.bfloat16, impl="native")
    v = model.init(jax.random.key(0), x)
    assert "avemo_lstm" not in jax.jit(lambda v: model.apply(v, x)).lower(v).as_text()
    assert model.apply(v, x).dtype == jnp.bfloat16


def test_kernel_rejects_shapes_that_do_not_match():
    """The C++ handler checks its operands and fails with a message, not a crash."""
    bad = jax.ffi.ffi_call(
        "avemo_lstm_fwd",
        tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in [(2, 3, 4), (2, 3, 16), (2, 3, 4)]),
    )
    with pytest.raises(Exception, match="w_h must be"):
        jax.block_until_ready(bad(jnp.zeros((2, 3, 16)), jnp.zeros((5, 16)), jnp.zeros(16)))
    with pytest.raises(Exception, match="bias must be"):
        jax.block_until_ready(bad(jnp.zeros((2, 3, 16)), jnp.zeros((4, 16)), jnp.zeros(12)))


def test_without_a_compiler_the_model_warns_and_uses_the_scan(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("AVEMO_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_loaded", {})
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert native.library("lstm_cpu") is None
    x = jax.random.normal(jax.random.key(1), (2, 6, 5))
    model = SequenceLSTM(4, impl="native")
    v = model.init(jax.random.key(0), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not per call
        hlo = jax.jit(lambda v: model.apply(v, x)).lower(v).as_text()
    assert "avemo_lstm" not in hlo
    np.testing.assert_allclose(
        model.apply(v, x), SequenceLSTM(4, impl="fused").apply(v, x), atol=1e-6
    )


def test_the_build_is_cached_by_content(monkeypatch, tmp_path):
    """A second build reuses the library; a changed source builds another (not a stale one)."""
    monkeypatch.setenv("AVEMO_NATIVE_CACHE", str(tmp_path))
    compiler = native._compiler()
    first = native._build("lstm_cpu", compiler)
    stamp = first.stat().st_mtime_ns
    assert native._build("lstm_cpu", compiler) == first and first.stat().st_mtime_ns == stamp
    source = tmp_path / "src"
    source.mkdir()
    changed = source / "lstm_cpu.cc"
    changed.write_text(native.source_path("lstm_cpu").read_text() + "\n// changed\n")
    monkeypatch.setattr(native, "source_path", lambda name: source / f"{name}.cc")
    second = native._build("lstm_cpu", compiler)
    assert second != first and second.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
