"""Losses: RMSE (Eq. 37), 1 - CCC and the auxiliary modality loss (Eq. 31) with its gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avemo import objectives


@pytest.mark.parametrize(
    "m,n",  # the four cases of Sec. 5.2
    [
        (1.0, 0.0),  # voice, no face: gradient 2 beta - 2 -> beta pushed to 1
        (0.0, 1.0),  # face, no voice: gradient 2 beta -> beta pushed to 0
        (1.0, 1.0),  # both
        (0.0, 0.0),
    ],  # neither
)
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_aux_loss_gradient_is_closed_form_eq_32(m, n, beta):
    mask = jnp.ones((1, 1))
    grad = jax.grad(
        lambda b: objectives.aux_modality_loss(b, jnp.full((1, 1), m), jnp.full((1, 1), n), mask)
    )(jnp.full((1, 1), beta))
    np.testing.assert_allclose(grad[0, 0], 2 * beta - m + n - 1, rtol=1e-6, atol=1e-7)


def test_aux_loss_value_eq_31_and_mask():
    beta = jnp.array([[0.2, 0.7, 0.4]])
    m = jnp.array([[0.5, 0.0, 1.0]])
    n = jnp.array([[1.0, 1.0, 0.0]])
    mask = jnp.array([[1.0, 1.0, 0.0]])
    expected = np.mean(
        [0.5 * ((0.5 - 0.2) ** 2 + (1 - 0.8) ** 2), 0.5 * ((0.0 - 0.7) ** 2 + (1 - 0.3) ** 2)]
    )
    np.testing.assert_allclose(objectives.aux_modality_loss(beta, m, n, mask), expected, rtol=1e-6)


def test_rmse_matches_numpy_per_dimension_and_ignores_padding():
    rng = np.random.default_rng(0)
    p, t = rng.standard_normal((2, 3, 7, 2))
    mask = np.ones((3, 7))
    mask[2, 4:] = 0
    sel = mask.astype(bool)
    expected = np.mean([np.sqrt(np.mean((p[..., d][sel] - t[..., d][sel]) ** 2)) for d in range(2)])
    np.testing.assert_allclose(objectives.rmse(p, t, mask), expected, rtol=1e-5)


def test_ccc_loss_perfect_and_negated():
    x = jnp.linspace(-1, 1, 50).reshape(1, 50, 1)
    mask = jnp.ones((1, 50))
    np.testing.assert_allclose(objectives.ccc_loss(x, x, mask), 0.0, atol=1e-6)
    np.testing.assert_allclose(objectives.ccc_loss(-x, x, mask), 2.0, atol=1e-6)
