"""On 8 fake devices inside jax.shard_map, the objective equals the single-device computation on the global batch.

Covers the losses (values and gradients, as the trainer takes them), the queue update, the head's synced BatchNorm,
group mixing and the top-k look-up. Row r of the global batch lives on device r // B_local (the mesh order).
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from uamix_jax.models.head import NNCLRHead
from uamix_jax.objectives.losses import nnclr_loss, soft_nnclr_loss, soft_targets
from uamix_jax.objectives.mixing import mix_groups
from uamix_jax.objectives.neighbours import nearest_neighbour, nearest_neighbour_with_index
from uamix_jax.objectives.queue import init_queue, update_queue

AXIS = "data"
N_DEV = 8
B_LOCAL = 4
B = N_DEV * B_LOCAL
D = 6


@pytest.fixture(scope="module")
def mesh(n_devices):
    assert n_devices == N_DEV
    return Mesh(np.array(jax.devices()), (AXIS,))


def sharded(mesh, in_specs, out_specs, check_vma=True):
    return lambda f: jax.jit(jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=check_vma))


def close(a, b, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-5)


def loss_inputs(seed):
    rng = np.random.default_rng(seed)
    p_a, p_b = (jnp.asarray(v, jnp.float32) for v in rng.normal(size=(2, B, D)))
    nn = rng.normal(size=(2, B, D))
    nn_a, nn_b = (jnp.asarray(v / np.linalg.norm(v, axis=-1, keepdims=True), jnp.float32) for v in nn)
    lam = jnp.asarray(np.repeat(rng.uniform(0.3, 0.9, size=N_DEV), B_LOCAL), jnp.float32)  # one λ per device
    local_perm = jnp.asarray(np.roll(np.arange(B_LOCAL), -1), jnp.int32)  # a cyclic shift: Y not symmetric
    return p_a, p_b, nn_a, nn_b, lam, local_perm


# ---- losses -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_soft_loss_value_and_input_gradients_equal_single_device(mesh, label_smoothing):
    p_a, p_b, nn_a, nn_b, lam, local_perm = loss_inputs(0)

    @sharded(mesh, (P(AXIS),) * 5 + (P(),), (P(), P(AXIS), P(AXIS), P(AXIS), P()))
    def per_device(p_a, p_b, nn_a, nn_b, lam, perm):
        y = soft_targets(lam, perm, axis_name=AXIS)
        loss = partial(soft_nnclr_loss, targets=y, axis_name=AXIS, label_smoothing=label_smoothing)
        value, grads = jax.value_and_grad(lambda *a: loss(*a), argnums=(0, 1, 2))(p_a, p_b, nn_a, nn_b)
        return value, *grads, y

    value, g_a, g_b, g_nn, y = per_device(p_a, p_b, nn_a, nn_b, lam, local_perm)

    global_perm = jnp.asarray(np.arange(B) // B_LOCAL * B_LOCAL, jnp.int32) + jnp.tile(local_perm, N_DEV)
    y_single = soft_targets(lam, global_perm)
    close(y, y_single, atol=0)
    assert not np.allclose(np.asarray(y), np.asarray(y).T)  # the orientation is exercised
    single = partial(soft_nnclr_loss, targets=y_single, label_smoothing=label_smoothing)
    want, (w_a, w_b) = jax.jit(jax.value_and_grad(lambda a, b: single(a, b, nn_a, nn_b), argnums=(0, 1)))(p_a, p_b)
    close(value, want)
    close(g_a, w_a)
    close(g_b, w_b)
    np.testing.assert_array_equal(np.asarray(g_nn), 0.0)


def test_plain_loss_value_and_input_gradients_equal_single_device(mesh):
    p_a, p_b, nn_a, nn_b, _, _ = loss_inputs(1)

    @sharded(mesh, (P(AXIS),) * 4, (P(), P(AXIS), P(AXIS)))
    def per_device(p_a, p_b, nn_a, nn_b):
        value, grads = jax.value_and_grad(
            lambda a, b: nnclr_loss(a, b, nn_a, nn_b, 0.2, axis_name=AXIS), argnums=(0, 1)
        )(p_a, p_b)
        return value, *grads

    value, g_a, g_b = per_device(p_a, p_b, nn_a, nn_b)
    want, (w_a, w_b) = jax.value_and_grad(lambda a, b: nnclr_loss(a, b, nn_a, nn_b, 0.2), argnums=(0, 1))(p_a, p_b)
    close(value, want)
    close(g_a, w_a)
    close(g_b, w_b)


@pytest.mark.parametrize("check_vma", [True, False])
def test_pmeaned_parameter_gradients_equal_single_device(mesh, check_vma):
    """The trainer's pattern: replicated parameters, per-device loss, jax.grad inside shard_map, pmean."""
    p_a, p_b, nn_a, nn_b, lam, local_perm = loss_inputs(2)
    w = jnp.asarray(np.random.default_rng(3).normal(size=(D, D)), jnp.float32)

    def loss(w, x_a, x_b, nn_a, nn_b, y, axis_name):
        return soft_nnclr_loss(jnp.tanh(x_a @ w), jnp.tanh(x_b @ w), nn_a, nn_b, y, axis_name=axis_name)

    @sharded(mesh, (P(),) + (P(AXIS),) * 5 + (P(),), (P(), P()), check_vma=check_vma)
    def per_device(w, x_a, x_b, nn_a, nn_b, lam, perm):
        y = soft_targets(lam, perm, axis_name=AXIS)
        value, grad = jax.value_and_grad(loss)(w, x_a, x_b, nn_a, nn_b, y, AXIS)
        return value, jax.lax.pmean(grad, AXIS)

    value, grad = per_device(w, p_a, p_b, nn_a, nn_b, lam, local_perm)
    global_perm = jnp.asarray(np.arange(B) // B_LOCAL * B_LOCAL, jnp.int32) + jnp.tile(local_perm, N_DEV)
    want, want_grad = jax.jit(jax.value_and_grad(loss), static_argnums=6)(
        w, p_a, p_b, nn_a, nn_b, soft_targets(lam, global_perm), None
    )
    close(value, want)
    close(grad, want_grad)


# ---- queue --------------------------------------------------------------------------------------------------------
def test_queue_update_gathers_in_device_order_and_every_device_holds_the_same_queue(mesh):
    queue, ids, labels, ptr = init_queue(jax.random.key(0), 3 * B, D)
    rng = np.random.default_rng(4)
    z = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
    batch_ids = jnp.arange(B, dtype=jnp.int32) + 500
    batch_labels = jnp.asarray(rng.integers(0, 7, size=B), jnp.int32)
    ptr = jnp.int32(B)

    @sharded(mesh, (P(),) * 4 + (P(AXIS),) * 3, (P(AXIS),) * 4)
    def per_device(queue, ids, labels, ptr, z, batch_ids, batch_labels):
        out = update_queue(queue, ids, ptr, z, batch_ids, labels=batch_labels, queue_labels=labels, axis_name=AXIS)
        return tuple(v[None] for v in out)  # stacked per device, so that every copy can be compared

    stacked = per_device(queue, ids, labels, ptr, z, batch_ids, batch_labels)
    want = jax.jit(update_queue)(queue, ids, ptr, z, batch_ids, labels=batch_labels, queue_labels=labels)
    for got, ref in zip(stacked, want):
        assert got.shape == (N_DEV,) + ref.shape
        for d in range(N_DEV):
            close(got[d], ref, atol=0)
    close(want[0][B : 2 * B], z / jnp.linalg.norm(z, axis=1, keepdims=True), atol=1e-6)


def test_queue_error_names_the_global_batch(mesh):
    queue, ids, _, ptr = init_queue(jax.random.key(0), 48, D)  # 48 is a multiple of B_LOCAL, not of B = 32

    @sharded(mesh, (P(), P(), P(), P(AXIS), P(AXIS)), (P(), P(), P()))
    def per_device(queue, ids, ptr, z, batch_ids):
        return update_queue(queue, ids, ptr, z, batch_ids, axis_name=AXIS)

    with pytest.raises(ValueError, match=r"K=48 must be a multiple of the global batch B=32 \(8 devices"):
        per_device(queue, ids, ptr, jnp.ones((B, D)), jnp.arange(B, dtype=jnp.int32))


# ---- head ---------------------------------------------------------------------------------------------------------
SMALL = dict(proj_hidden_dim=12, proj_dim=D, pred_hidden_dim=10)


def test_head_batchnorm_statistics_cover_the_global_batch(mesh):
    h = jax.random.normal(jax.random.key(1), (B, 5)) * 3.0 + 1.0
    variables = NNCLRHead(**SMALL).init(jax.random.key(0), h)
    synced = NNCLRHead(**SMALL, axis_name=AXIS)

    @sharded(mesh, (P(), P(AXIS)), (P(AXIS), P(AXIS), P(AXIS), P(AXIS)))
    def per_device(variables, h):
        (z, p), updates = synced.apply(variables, h, mutable=["batch_stats"])
        z_only, _ = synced.apply(variables, h, method=NNCLRHead.project, mutable=["batch_stats"])
        return z, p, z_only, jax.tree.map(lambda v: v[None], updates["batch_stats"])

    z, p, z_only, stats = per_device(variables, h)
    (want_z, want_p), want = jax.jit(partial(NNCLRHead(**SMALL).apply, mutable=["batch_stats"]))(variables, h)
    close(z, want_z)
    close(p, want_p)
    close(z_only, want_z)
    for got, ref in zip(jax.tree.leaves(stats), jax.tree.leaves(want["batch_stats"])):
        for d in range(N_DEV):
            close(got[d], ref, atol=1e-6)
    # Unsynced per-device statistics would differ: the test can tell the two apart.
    local = jax.jit(partial(NNCLRHead(**SMALL).apply, mutable=["batch_stats"]))(variables, h[:B_LOCAL])[0][0]
    assert np.abs(np.asarray(local) - np.asarray(want_z[:B_LOCAL])).max() > 1e-3


def test_training_step_gradients_through_head_and_loss_equal_single_device(mesh):
    """Head (synced BN) → NN look-up → soft loss; pmean-ed parameter gradients, as the trainer's step does."""
    rng = np.random.default_rng(5)
    h_a, h_b = (jnp.asarray(v, jnp.float32) for v in rng.normal(size=(2, B, 5)))
    sample_ids = jnp.arange(B, dtype=jnp.int32)
    queue, queue_ids, _, _ = init_queue(jax.random.key(2), 64, D)
    lam = jnp.asarray(np.repeat(rng.uniform(0.3, 0.9, size=N_DEV), B_LOCAL), jnp.float32)
    local_perm = jnp.arange(B_LOCAL - 1, -1, -1, dtype=jnp.int32)
    params = NNCLRHead(**SMALL).init(jax.random.key(3), h_a)

    def step_loss(params, h_a, h_b, ids, y, axis_name):
        head = NNCLRHead(**SMALL, axis_name=axis_name)
        (z_a, p_a), _ = head.apply(params, h_a, mutable=["batch_stats"])
        (z_b, p_b), _ = head.apply(params, h_b, mutable=["batch_stats"])
        nn_a = nearest_neighbour(z_a, queue, queue_ids, ids)
        nn_b = nearest_neighbour(z_b, queue, queue_ids, ids)
        return soft_nnclr_loss(p_a, p_b, nn_a, nn_b, y, axis_name=axis_name)

    @sharded(mesh, (P(),) + (P(AXIS),) * 5, (P(), P()))
    def per_device(params, h_a, h_b, ids, lam, perm):
        y = soft_targets(lam, perm, axis_name=AXIS)
        value, grads = jax.value_and_grad(step_loss)(params, h_a, h_b, ids, y, AXIS)
        return value, jax.lax.pmean(grads, AXIS)

    value, grads = per_device(params, h_a, h_b, sample_ids, lam, jnp.tile(local_perm, N_DEV))
    global_perm = jnp.asarray(np.arange(B) // B_LOCAL * B_LOCAL, jnp.int32) + jnp.tile(local_perm, N_DEV)
    want, want_grads = jax.jit(jax.value_and_grad(step_loss), static_argnums=5)(
        params, h_a, h_b, sample_ids, soft_targets(lam, global_perm), None
    )
    close(value, want)
    jax.tree.map(close, grads["params"], want_grads["params"])


# ---- mixing and look-up -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("group_size", [B_LOCAL, B_LOCAL // 2])
def test_mix_groups_per_device_equals_single_device_mix(mesh, group_size):
    x = jax.random.normal(jax.random.key(4), (B, 20, 6))
    key = jax.random.key(5)

    @sharded(mesh, (P(), P(AXIS)), (P(AXIS), P(AXIS), P(AXIS)))
    def per_device(key, x):
        first = jax.lax.axis_index(AXIS) * (B_LOCAL // group_size)
        mixed, lam, perm = mix_groups(key, x, group_size=group_size, first_group_index=first)
        return mixed, lam, perm + jax.lax.axis_index(AXIS) * B_LOCAL  # local indices → global

    mixed, lam, perm = per_device(key, x)
    want = jax.jit(partial(mix_groups, group_size=group_size))(key, x)
    close(mixed, want[0], atol=0)
    close(lam, want[1], atol=0)
    np.testing.assert_array_equal(np.asarray(perm), np.asarray(want[2]))
    assert len(np.unique(np.asarray(lam))) > 1  # devices drew different λ


def test_top_k_lookup_with_global_first_index_equals_single_device(mesh):
    rng = np.random.default_rng(6)
    z = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
    queue, _, _, _ = init_queue(jax.random.key(7), 64, D)
    queue_ids = jnp.asarray(rng.integers(0, B, size=64), jnp.int32)
    ids = jnp.arange(B, dtype=jnp.int32)
    key = jax.random.key(8)

    @sharded(mesh, (P(AXIS), P(), P(), P(AXIS), P()), P(AXIS))
    def per_device(z, queue, queue_ids, ids, key):
        first = jax.lax.axis_index(AXIS) * B_LOCAL
        return nearest_neighbour_with_index(z, queue, queue_ids, ids, top_k=5, key=key, first_index=first)[1]

    got = per_device(z, queue, queue_ids, ids, key)
    want = jax.jit(partial(nearest_neighbour_with_index, top_k=5))(z, queue, queue_ids, ids, key=key)[1]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_without_check_vma_input_cotangents_are_scaled_by_the_axis_size(mesh):
    """What the losses' docstring says about check_vma=False: psum transposes to psum, so input grads are n×."""
    p_a, p_b, nn_a, nn_b, _, _ = loss_inputs(7)

    @sharded(mesh, (P(AXIS),) * 4, P(AXIS), check_vma=False)
    def per_device(p_a, p_b, nn_a, nn_b):
        return jax.grad(lambda a: nnclr_loss(a, p_b, nn_a, nn_b, axis_name=AXIS))(p_a)

    want = jax.jit(jax.grad(lambda a: nnclr_loss(a, p_b, nn_a, nn_b)))(p_a)
    close(per_device(p_a, p_b, nn_a, nn_b), N_DEV * want)
