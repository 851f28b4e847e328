"""Two implementations of the same model, one train step: equal outputs, loss and gradients."""

import jax
import jax.numpy as jnp
import numpy as np


def assert_same_train_step(model_a, model_b, batch, grad_rtol=1e-3, grad_atol=1e-5) -> None:
    """A train-mode step of both models (model_b's initial variables, the same dropout key):
    outputs and loss to float rounding, every parameter's gradient within the tolerances."""
    variables = model_b.init(jax.random.key(0), batch)

    def loss(params, model):
        out, _ = model.apply(
            {**variables, "params": params}, batch, train=True,
            rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"],
        )  # fmt: skip
        return jnp.sum((out["outputs"] - batch["labels"]) ** 2), out["outputs"]

    step = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (l_a, o_a), g_a = step(variables["params"], model_a)
    (l_b, o_b), g_b = step(variables["params"], model_b)
    np.testing.assert_allclose(o_a, o_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(l_a, l_b, rtol=1e-5)
    assert jax.tree.structure(g_a) == jax.tree.structure(g_b)
    for x, y in zip(jax.tree.leaves(g_a), jax.tree.leaves(g_b), strict=True):
        np.testing.assert_allclose(x, y, rtol=grad_rtol, atol=grad_atol)
