"""AudioMAE's reconstruction loss (`MaskedAutoencoderViT.forward_loss`, norm_pix_loss=True).

    t̂_n   = (t_n − mean(t_n)) / √(var(t_n) + 1e-6)       per patch n over its p² values, var unbiased (torch .var())
    ℓ_n   = mean_j (pred_nj − t̂_nj)²
    L     = Σ_n ℓ_n m_n / Σ_n m_n                          m = 1 on masked (hidden) patches only

With `axis_name` both sums run over the whole global batch (psum), so L is the global mean over masked patches and
its gradient w.r.t. replicated parameters is already the all-reduced one (see uamix_jax/train/tune_step.py).
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

NORM_PIX_EPS = 1e-6  # AudioMAE's (var + 1.e-6) ** .5


def normalized_patches(patches: jax.Array) -> jax.Array:
    """Per-patch normalised targets (x − μ) / √(σ² + 1e-6), σ² unbiased over the last axis; [..., P] float32."""
    x = patches.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True, ddof=1)
    return (x - mean) / jnp.sqrt(var + NORM_PIX_EPS)


def mae_loss(
    pred: jax.Array, target_patches: jax.Array, mask: jax.Array, *, norm_pix: bool = True,
    axis_name: str | None = None,
) -> jax.Array:
    """The masked-patch MSE above. pred, target_patches [B, N, P]; mask [B, N] (1 = masked); scalar float32.

    norm_pix=False compares with the raw patches. axis_name: the data-parallel axis to average over (inside
    shard_map / pmap); None for a single-device batch.
    """
    chex.assert_rank([pred, target_patches, mask], [3, 3, 2])
    chex.assert_equal_shape([pred, target_patches])
    chex.assert_equal_shape_prefix([pred, mask], 2)
    target = normalized_patches(target_patches) if norm_pix else target_patches.astype(jnp.float32)
    per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
    mask = mask.astype(jnp.float32)
    total, count = jnp.sum(per_patch * mask), jnp.sum(mask)
    if axis_name is not None:
        total, count = jax.lax.psum(total, axis_name), jax.lax.psum(count, axis_name)
    return total / count
