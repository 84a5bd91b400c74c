"""Nearest-neighbour look-up in the NNCLR queue (MAE-CT's `find_nn` with own-id exclusion and random top-k).

For each row of z: s_k = ẑ · Q_k (cosine, the queue rows are unit vectors), rows whose id equals the sample's own id
excluded, then the best row (top_k = 1) or one of the top_k best uniformly at random. The result is a constant
(stop_gradient): NNCLR's neighbours carry no gradient.

Randomness is per sample and independent of the device count: row i draws with fold_in(key, first_index + i), so
inside shard_map pass `first_index = axis_index * B_local` (the global index of the first local row).
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from uamix_jax.objectives.losses import l2_normalize


def _check(z: jax.Array, queue: jax.Array, queue_ids: jax.Array, sample_ids: jax.Array, top_k: int) -> None:
    chex.assert_rank([z, queue, queue_ids, sample_ids], [2, 2, 1, 1])
    chex.assert_type([z, queue, queue_ids, sample_ids], [float, float, int, int])
    chex.assert_equal_shape_prefix([z, sample_ids], 1)
    chex.assert_equal_shape_prefix([queue, queue_ids], 1)
    if z.shape[1] != queue.shape[1]:
        raise ValueError(f"nearest_neighbour: z is {z.shape} but the queue is {queue.shape}; the feature dims differ")
    if not 1 <= top_k <= queue.shape[0]:
        raise ValueError(f"nearest_neighbour: top_k must be in [1, K={queue.shape[0]}], got top_k={top_k}")


def nearest_neighbour_with_index(z: jax.Array, queue: jax.Array, queue_ids: jax.Array, sample_ids: jax.Array, *,
                                 top_k: int = 1, key: jax.Array | None = None,
                                 first_index: int | jax.Array = 0) -> tuple[jax.Array, jax.Array]:
    """Like `nearest_neighbour`, also returning the chosen queue rows' indices [B] int32 (e.g. to look up labels)."""
    _check(z, queue, queue_ids, sample_ids, top_k)
    if top_k > 1 and key is None:
        raise ValueError(f"nearest_neighbour: top_k={top_k} > 1 draws one of the k nearest at random; pass key=")
    zn = l2_normalize(jax.lax.stop_gradient(z).astype(jnp.float32))
    q = jax.lax.stop_gradient(queue)
    sim = jnp.dot(zn.astype(q.dtype), q.T, preferred_element_type=jnp.float32)  # [B, K]
    # −inf, not MAE-CT's −1: a genuine cosine of −1 must not tie with an excluded row.
    sim = jnp.where(queue_ids[None, :] == sample_ids[:, None], -jnp.inf, sim)
    if top_k == 1:
        index = jnp.argmax(sim, axis=-1).astype(jnp.int32)
    else:
        _, candidates = jax.lax.top_k(sim, top_k)  # [B, k]
        rows = jnp.asarray(first_index, jnp.int32) + jnp.arange(z.shape[0], dtype=jnp.int32)
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)
        pick = jax.vmap(lambda k: jax.random.randint(k, (), 0, top_k))(keys)
        index = jnp.take_along_axis(candidates, pick[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jnp.take(q, index, axis=0), index


def nearest_neighbour(z: jax.Array, queue: jax.Array, queue_ids: jax.Array, sample_ids: jax.Array, *, top_k: int = 1,
                      key: jax.Array | None = None, first_index: int | jax.Array = 0) -> jax.Array:
    """NN(ẑ, Q): the queue row [B, D] most similar (cosine) to each row of z, excluding rows with the sample's own id.

    z [B, D] float (normalised here); queue [K, D] unit rows; queue_ids [K] int (−1 = empty); sample_ids [B] int.
    top_k > 1: one of the k most similar rows uniformly at random, row i keyed by fold_in(key, first_index + i).
    The result is wrapped in stop_gradient.
    """
    return nearest_neighbour_with_index(
        z, queue, queue_ids, sample_ids, top_k=top_k, key=key, first_index=first_index
    )[0]
