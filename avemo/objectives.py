"""Training objectives: RMSE (Eq. 37), 1 - CCC (Eq. 35) and the auxiliary modality loss (Eq. 31).

All take per-step arrays [..., L] or [..., L, 2] with a `mask` of real (non-padding) steps and
return scalars; they live apart from the model (which only computes arrays).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    mask = jnp.broadcast_to(mask, x.shape).astype(jnp.float32)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def rmse(predictions: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Eq. (37): sqrt(1/n sum_i (x_i - y_i)^2) per output dimension, averaged over dimensions.

    predictions, targets: [B, L, D]; mask: [B, L]. Returns a scalar.
    """
    per_dim = jax.vmap(
        lambda p, t: jnp.sqrt(_masked_mean(jnp.square(p - t), mask) + 1e-12),
        in_axes=(-1, -1),
    )(predictions, targets)
    return per_dim.mean()


def ccc(x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """Eq. (35): 2 rho s_x s_y / (s_x^2 + s_y^2 + (mu_x - mu_y)^2) over the masked entries.

    With rho s_x s_y = cov(x, y) (Eq. 36), population (1/n) moments.
    """
    mask = jnp.broadcast_to(mask, x.shape).astype(jnp.float32)
    n = jnp.maximum(mask.sum(), 1.0)
    mu_x = jnp.sum(x * mask) / n
    mu_y = jnp.sum(y * mask) / n
    var_x = jnp.sum(jnp.square(x - mu_x) * mask) / n
    var_y = jnp.sum(jnp.square(y - mu_y) * mask) / n
    cov = jnp.sum((x - mu_x) * (y - mu_y) * mask) / n
    return 2.0 * cov / (var_x + var_y + jnp.square(mu_x - mu_y) + 1e-8)


def ccc_loss(predictions: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """1 - CCC per output dimension (pooled over the batch), averaged over dimensions."""
    per_dim = jax.vmap(lambda p, t: 1.0 - ccc(p, t, mask), in_axes=(-1, -1))(predictions, targets)
    return per_dim.mean()


def aux_modality_loss(
    audio_gate: jax.Array, speech_energy: jax.Array, face_present: jax.Array, mask: jax.Array
) -> jax.Array:
    """Eq. (31): L1 = 1/2 [(m - beta_t)^2 + (n - (1 - beta_t))^2], averaged over real steps.

    m = speech energy in [0, 1], n = face present in {0, 1}, beta_t = the audio gate of Eq. (30).
    Its gradient per step is dL1/dbeta_t = 2 beta_t - m + n - 1 (Eq. 32) -- times 1/#steps here,
    because we average over steps so that lambda does not depend on the window length.
    """
    m = speech_energy.astype(jnp.float32)
    n = face_present.astype(jnp.float32)
    per_step = 0.5 * (jnp.square(m - audio_gate) + jnp.square(n - (1.0 - audio_gate)))
    return _masked_mean(per_step, mask)


def modality_head_loss(kind: str, outputs, batch, audio_weight: float = 1.0) -> jax.Array:
    """Main loss of the audio-only and the face-only heads (model.modality_heads):
    `audio_weight` x the voice head's + the face head's (`loss.audio_head_weight`).

    The face head's loss counts only steps with a face in view (n = 1): without a face its
    input carries nothing about the labels.
    """
    mask = batch["mask"]
    face_mask = mask * batch["face_present"].astype(mask.dtype)
    video = main_loss(kind, outputs["video_outputs"], batch["labels"], face_mask)
    audio = main_loss(kind, outputs["audio_outputs"], batch["labels"], mask)
    return audio_weight * audio + video


def main_loss(kind: str, predictions: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """The main loss selected by `config.loss.main`."""
    if kind == "rmse":
        return rmse(predictions, targets, mask)
    if kind == "ccc":
        return ccc_loss(predictions, targets, mask)
    if kind == "rmse+ccc":
        return rmse(predictions, targets, mask) + ccc_loss(predictions, targets, mask)
    raise ValueError(f"unknown main loss {kind!r}")
