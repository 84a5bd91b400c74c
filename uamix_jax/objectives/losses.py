"""Plain and soft NNCLR losses (MAE-CT's NNCLR loss; the paper's Eq. 4), single-device or sharded over a mesh axis.

Notation: view a = the mixed anchors, view b = the positives; p̂ = L2-normalised predictions; nn_v = the queue
neighbour of view v's projection (unit rows, constants); Y [B, B] = soft targets, a row per mixed sample i and a
column per positive j. With CE(L, Y) = (1/B) Σ_r −Σ_c Y_rc log softmax(L_r)_c:

    L = ½ [ CE(nn_b · p̂_aᵀ / τ, Yᵀ) + CE(nn_a · p̂_bᵀ / τ, Y) ]

The first term's rows are the positives j, so its target row is column j of Y (which mixed samples contain j).
Y = I gives MAE-CT's plain NNCLR loss.

Sharded use (`axis_name` set, inside `jax.shard_map`): every per-sample input is the device's local rows (device d
holds global rows d·B_l … (d+1)·B_l − 1, the mesh order); `targets` is the *global* [B_g, B_g] matrix, the same on
every device, built by `soft_targets(lam, perm, axis_name=...)`. The predictions are all-gathered so the negatives are
the global batch; each device computes its own rows of both terms and the result, psum-ed, is the global loss on
every device. Differentiating it inside shard_map (default `check_vma=True`) gives each device the exact gradient
of the global loss w.r.t. its local rows, and w.r.t. replicated parameters the already-summed global gradient (so a
following `pmean` of the parameter gradients changes nothing). With `check_vma=False` the psum transposes to a psum,
which scales the per-device input cotangents by the axis size; the pmean-ed parameter gradients are still exact.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(‖x‖₂, eps) along the last axis (torch.nn.functional.normalize's convention: zero rows stay zero)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def soft_targets(lam: jax.Array | float, perm: jax.Array, *, axis_name: str | None = None) -> jax.Array:
    """Eq. 3's soft targets Y [B, B] float32: Y[i, i] += λ_i, Y[i, perm(i)] += 1 − λ_i (rows = mixed samples).

    `lam`: a scalar or [B] (each sample's group λ, as returned by `mix_groups`); `perm` [B] int. With `axis_name`,
    lam and perm are the device's local values, perm indexing the local batch; they are all-gathered (perm offset
    to global indices) and the global [B_g, B_g] matrix, block-diagonal when mixing stays within devices, is
    returned on every device (typed invariant over the axis).
    """
    chex.assert_rank(perm, 1)
    chex.assert_type(perm, int)
    batch = perm.shape[0]
    lam = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), (batch,))
    if axis_name is not None:
        perm = perm + jax.lax.axis_index(axis_name) * batch
        # 'invarying': Y is then typed as the same on every device (shard_map out_specs P() accepts it).
        lam = jax.lax.all_gather(lam, axis_name, tiled=True, to="invarying")
        perm = jax.lax.all_gather(perm, axis_name, tiled=True, to="invarying")
        batch = perm.shape[0]
    eye = jnp.eye(batch, dtype=jnp.float32)
    partner = jax.nn.one_hot(perm, batch, dtype=jnp.float32)
    return lam[:, None] * eye + (1.0 - lam)[:, None] * partner


def _check_inputs(p_a: jax.Array, p_b: jax.Array, nn_a: jax.Array, nn_b: jax.Array) -> None:
    chex.assert_rank([p_a, p_b, nn_a, nn_b], 2)
    chex.assert_equal_shape([p_a, p_b, nn_a, nn_b])
    chex.assert_type([p_a, p_b, nn_a, nn_b], float)


def soft_nnclr_loss(p_a: jax.Array, p_b: jax.Array, nn_a: jax.Array, nn_b: jax.Array, targets: jax.Array,
                    temperature: float = 0.15, *, axis_name: str | None = None,
                    label_smoothing: float = 0.0) -> jax.Array:
    """Soft NNCLR loss ½ [CE(nn_b p̂_aᵀ/τ, Yᵀ) + CE(nn_a p̂_bᵀ/τ, Y)], a float32 scalar (the paper's Eq. 4).

    p_a, p_b [B, D]: predictions of the mixed and positive views (normalised here); nn_a, nn_b [B, D]: queue
    neighbours of each view's projection, used as given and with stop_gradient; targets [B_g, B_g] (B_g = B, or the
    global batch under `axis_name`); `label_smoothing` ε: Y ← (1 − ε) Y + ε / B_g (the "MixUp + LS" ablation).
    Computed in float32 whatever the input dtype.
    """
    _check_inputs(p_a, p_b, nn_a, nn_b)
    local = p_a.shape[0]
    n_dev = jax.lax.axis_size(axis_name) if axis_name is not None else 1
    global_batch = local * n_dev
    chex.assert_rank(targets, 2)
    if targets.shape != (global_batch, global_batch):
        where = f"the global batch ({n_dev} devices on axis {axis_name!r} × {local} rows)" if axis_name else "B"
        raise ValueError(
            f"soft_nnclr_loss: targets must be [{global_batch}, {global_batch}] for {where}, got {targets.shape}; "
            "build them with soft_targets(lam, perm, axis_name=...) from the local lam and perm"
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"soft_nnclr_loss: label_smoothing must be in [0, 1], got {label_smoothing}")

    pa = l2_normalize(p_a.astype(jnp.float32))
    pb = l2_normalize(p_b.astype(jnp.float32))
    nn_a = jax.lax.stop_gradient(nn_a.astype(jnp.float32))
    nn_b = jax.lax.stop_gradient(nn_b.astype(jnp.float32))
    y = jax.lax.stop_gradient(targets.astype(jnp.float32))
    if label_smoothing:
        y = (1.0 - label_smoothing) * y + label_smoothing / global_batch

    if axis_name is not None:
        # Gathered with gradient: each device's cotangents for the other devices' predictions are summed back to
        # their owners by all_gather's transpose (psum_scatter).
        pa = jax.lax.all_gather(pa, axis_name, tiled=True)
        pb = jax.lax.all_gather(pb, axis_name, tiled=True)
        offset = jax.lax.axis_index(axis_name) * local
    else:
        offset = 0
    y_rows = jax.lax.dynamic_slice_in_dim(y, offset, local, axis=0)  # Y rows of the local mixed samples
    yt_rows = jax.lax.dynamic_slice_in_dim(y, offset, local, axis=1).T  # Yᵀ rows of the local positives

    inv_tau = 1.0 / temperature
    logp_b = jax.nn.log_softmax((nn_b @ pa.T) * inv_tau, axis=-1)  # rows: positives j, columns: mixed samples
    logp_a = jax.nn.log_softmax((nn_a @ pb.T) * inv_tau, axis=-1)  # rows: mixed samples i, columns: positives
    loss = -0.5 * (jnp.sum(yt_rows * logp_b) + jnp.sum(y_rows * logp_a)) / global_batch
    if axis_name is not None:
        loss = jax.lax.psum(loss, axis_name)
    return loss


def nnclr_loss(p_a: jax.Array, p_b: jax.Array, nn_a: jax.Array, nn_b: jax.Array, temperature: float = 0.15, *,
               axis_name: str | None = None) -> jax.Array:
    """MAE-CT's NNCLR loss ½ [CE(nn_b p̂_aᵀ/τ, I) + CE(nn_a p̂_bᵀ/τ, I)]: `soft_nnclr_loss` with Y = I.

    Same inputs, outputs and sharding behaviour as `soft_nnclr_loss` (no targets argument).
    """
    _check_inputs(p_a, p_b, nn_a, nn_b)
    n_dev = jax.lax.axis_size(axis_name) if axis_name is not None else 1
    eye = jnp.eye(p_a.shape[0] * n_dev, dtype=jnp.float32)
    return soft_nnclr_loss(p_a, p_b, nn_a, nn_b, eye, temperature, axis_name=axis_name)
