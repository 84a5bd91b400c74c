"""The NNCLR queue (support set): K unit rows with the sample id (and label) of the clip each row came from.

A first-in-first-out ring buffer (MAE-CT's `dequeue_and_enqueue`): each step writes the (global) batch of
normalised projections at rows ptr … ptr + B − 1 (mod K) and advances ptr by B. K must be a multiple of the global
batch, as in MAE-CT. Ids stop a clip from picking its own older copy in the look-up; labels (−1 = unknown) are only
for monitoring the neighbours' label accuracy.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from uamix_jax.objectives.losses import l2_normalize


def init_queue(key: jax.Array, size: int, dim: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(queue [size, dim] float32 random unit rows (normalised N(0, 1)), queue_ids [size] int32 = −1,
    queue_labels [size] int32 = −1, ptr int32 0)."""
    if size < 1 or dim < 1:
        raise ValueError(f"init_queue: size and dim must be positive, got size={size}, dim={dim}")
    queue = l2_normalize(jax.random.normal(key, (size, dim), jnp.float32))
    minus_one = jnp.full((size,), -1, jnp.int32)
    return queue, minus_one, minus_one, jnp.zeros((), jnp.int32)


def update_queue(
    queue: jax.Array,
    queue_ids: jax.Array,
    ptr: jax.Array,
    z: jax.Array,
    ids: jax.Array,
    *,
    labels: jax.Array | None = None,
    queue_labels: jax.Array | None = None,
    axis_name: str | None = None,
) -> tuple[jax.Array, ...]:
    """Enqueues normalised z [B, D] with its ids [B] at rows ptr … ptr + B − 1 of queue [K, D]; ptr ← (ptr + B) mod K.

    Returns (queue, queue_ids, ptr), or (queue, queue_ids, queue_labels, ptr) when `labels` [B] and `queue_labels`
    [K] are passed. With `axis_name`, z, ids and labels are the device's rows; they are all-gathered in device order
    (= global batch order) and every device writes the same B_g rows, so all devices hold the same queue. K must be a
    multiple of B_g. z is taken with stop_gradient.
    """
    if (labels is None) != (queue_labels is None):
        raise ValueError(
            "update_queue: pass both labels= (the batch's [B]) and queue_labels= (the queue's [K]), or neither"
        )
    ptr = jnp.asarray(ptr)
    chex.assert_rank([queue, queue_ids, z, ids], [2, 1, 2, 1])
    chex.assert_type([queue, queue_ids, z, ids, ptr], [float, int, float, int, int])
    chex.assert_rank(ptr, 0)
    chex.assert_equal_shape_prefix([queue, queue_ids], 1)
    chex.assert_equal_shape_prefix([z, ids], 1)
    if labels is not None:
        chex.assert_rank([labels, queue_labels], 1)
        chex.assert_type([labels, queue_labels], int)
        chex.assert_equal_shape([labels, ids])
        chex.assert_equal_shape([queue_labels, queue_ids])
    size, dim = queue.shape
    if z.shape[1] != dim:
        raise ValueError(f"update_queue: z is {z.shape} but the queue is {queue.shape}; the feature dims differ")
    n_dev = jax.lax.axis_size(axis_name) if axis_name is not None else 1
    batch = z.shape[0] * n_dev
    if size % batch:
        where = f" ({n_dev} devices on axis {axis_name!r} × {z.shape[0]} rows)" if axis_name else ""
        raise ValueError(
            f"update_queue: queue size K={size} must be a multiple of the global batch B={batch}{where}; "
            f"choose K as a multiple of B (e.g. {max(1, size // batch) * batch})"
        )

    rows = l2_normalize(jax.lax.stop_gradient(z).astype(jnp.float32)).astype(queue.dtype)
    ids = ids.astype(queue_ids.dtype)
    if axis_name is not None:
        # 'invarying': a replicated queue stays typed as replicated, so the trainer's out_specs can be P().
        gather = lambda v: jax.lax.all_gather(v, axis_name, tiled=True, to="invarying")  # noqa: E731
        rows, ids = gather(rows), gather(ids)
        if labels is not None:
            labels = gather(labels)
    # Modular indices keep the write correct even for a ptr that is not a multiple of B (a queue restored from a
    # run with another batch size).
    index = (ptr + jnp.arange(batch, dtype=ptr.dtype)) % size
    queue = queue.at[index].set(rows, unique_indices=True)
    queue_ids = queue_ids.at[index].set(ids, unique_indices=True)
    new_ptr = ((ptr + batch) % size).astype(ptr.dtype)
    if labels is None:
        return queue, queue_ids, new_ptr
    queue_labels = queue_labels.at[index].set(labels.astype(queue_labels.dtype), unique_indices=True)
    return queue, queue_ids, queue_labels, new_ptr
