"""AudioMAE's structured 2-D token masking for fine-tuning (`models_vit.py:random_masking_2d`), with static shapes.

The patch tokens of a [T, F] input form a (T', F') = (T/16, F/16) grid, token n = F'·t + f. Per clip, keep

    n_t = int(T'·(1 − p_t)) whole time rows  and  n_f = int(F'·(1 − p_f)) whole frequency columns,

chosen uniformly without replacement; the kept tokens are the n_t·n_f cells where a kept row meets a kept column
(AudioMAE fine-tunes with p_t = p_f = 0.2: 51 × 6 = 306 of 512 tokens at T = 1024). The counts are fixed, so the
output shape is static under jit. AudioMAE hard-codes its (64, 8) grid; here the grid follows T.

Device-count invariance: clip i's draw is keyed by fold_in(key, sample_index[i]) (its global position or id), never
by the device it sits on. The kept tokens come out in grid order (AudioMAE emits them in random order; the encoder
is permutation-equivariant after the positional codes are added and mean-pools, so the order is immaterial).
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def kept_counts(time_patches: int, freq_patches: int, mask_t_prob: float, mask_f_prob: float) -> tuple[int, int]:
    """(n_t, n_f) = (int(T'·(1 − p_t)), int(F'·(1 − p_f))), AudioMAE's arithmetic; each must be ≥ 1."""
    for name, p in (("mask_t_prob", mask_t_prob), ("mask_f_prob", mask_f_prob)):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"structured token masking: {name}={p} must lie in [0, 1)")
    n_t, n_f = int(time_patches * (1 - mask_t_prob)), int(freq_patches * (1 - mask_f_prob))
    if n_t < 1 or n_f < 1:
        raise ValueError(f"structured token masking keeps {n_t} of {time_patches} time rows and {n_f} of "
                         f"{freq_patches} frequency columns; lower mask_t_prob / mask_f_prob so at least one of each "
                         f"survives")
    return n_t, n_f


def structured_keep_indices(key: jax.Array, sample_index: jax.Array, *, time_patches: int, freq_patches: int,
                            mask_t_prob: float = 0.2, mask_f_prob: float = 0.2) -> jax.Array:
    """Kept patch-token indices int32 [B, n_t·n_f] (grid order) for `AudioMAEEncoder(x, keep=...)`.

    sample_index [B] int: each clip's global index, which keys its draw. time_patches = T/16, freq_patches = F/16.
    """
    chex.assert_rank(sample_index, 1)
    chex.assert_type(sample_index, int)
    n_t, n_f = kept_counts(time_patches, freq_patches, mask_t_prob, mask_f_prob)

    def one(index: jax.Array) -> jax.Array:
        k_t, k_f = jax.random.split(jax.random.fold_in(key, index))
        rows = jnp.sort(jax.random.permutation(k_t, time_patches)[:n_t])
        cols = jnp.sort(jax.random.permutation(k_f, freq_patches)[:n_f])
        return (rows[:, None] * freq_patches + cols[None, :]).reshape(-1).astype(jnp.int32)

    return jax.vmap(one)(sample_index)
