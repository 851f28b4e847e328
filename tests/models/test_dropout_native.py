"""The dropout masks' random bits from the native threefry kernel (avemo/models/native/
random_cpu.cc) equal JAX's bit for bit: `jax.random.bits`, `jax.random.bernoulli`, under vmap,
and the Dropout layer's output; the program really holds the native call.

On a machine without a C++ compiler these tests skip, unless AVEMO_REQUIRE_NATIVE=1 (CI)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avemo.models import native
from avemo.models.dropout import Dropout, bernoulli, random_bits

if native.library("random_cpu") is None:
    if os.environ.get("AVEMO_REQUIRE_NATIVE") == "1":
        raise RuntimeError("AVEMO_REQUIRE_NATIVE=1 but the native random kernel did not build")
    pytest.skip("no native random kernel on this machine", allow_module_level=True)


# odd sizes, one element, more than one 32K chunk of the kernel
@pytest.mark.parametrize("shape", [(1,), (7,), (8, 150, 93), (3, 1, 40001)])
def test_bits_equal_jax_threefry(shape):
    for seed in (0, 1, 2**31 + 5):
        key = jax.random.fold_in(jax.random.key(seed), 17)
        np.testing.assert_array_equal(
            jax.jit(random_bits, static_argnums=1)(key, shape),
            jax.random.bits(key, shape, jnp.uint32),
        )
    raw = jax.random.PRNGKey(3)  # a raw uint32[2] key of the default impl
    np.testing.assert_array_equal(random_bits(raw, shape), jax.random.bits(raw, shape, jnp.uint32))
    hlo = jax.jit(random_bits, static_argnums=1).lower(key, shape).as_text()
    assert "avemo_threefry_bits" in hlo


@pytest.mark.parametrize("p", [0.5, 0.7, 0.9, 0.999])
def test_bernoulli_equals_jax(p):
    key = jax.random.key(5)
    np.testing.assert_array_equal(
        bernoulli(key, p, (8, 150, 64)), jax.random.bernoulli(key, p, (8, 150, 64))
    )
    traced = jax.jit(lambda p: bernoulli(key, p, (4, 33)))(jnp.float32(p))  # a traced rate
    np.testing.assert_array_equal(traced, jax.random.bernoulli(key, jnp.float32(p), (4, 33)))


def test_bits_under_vmap_one_key_per_member():
    keys = jax.random.split(jax.random.key(0), 3)
    got = jax.jit(jax.vmap(lambda k: random_bits(k, (5, 9))))(keys)
    want = jax.vmap(lambda k: jax.random.bits(k, (5, 9), jnp.uint32))(keys)
    np.testing.assert_array_equal(got, want)


def test_dropout_layer_output_equals_flax():
    import flax.linen as nn

    x = jax.random.normal(jax.random.key(1), (8, 30, 16))
    rngs = {"dropout": jax.random.key(2)}
    ours = Dropout(0.3).apply({}, x, deterministic=False, rngs=rngs)
    flax_out = nn.Dropout(0.3).apply({}, x, deterministic=False, rngs=rngs)
    np.testing.assert_array_equal(ours, flax_out)


def test_other_prng_impls_use_jax():
    key = jax.random.key(0, impl="rbg")
    np.testing.assert_array_equal(random_bits(key, (6,)), jax.random.bits(key, (6,), jnp.uint32))
    hlo = jax.jit(random_bits, static_argnums=1).lower(key, (6,)).as_text()
    assert "avemo_threefry_bits" not in hlo
