"""Nearest-neighbour look-up against a brute-force numpy search, and the FIFO queue."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uamix_jax.objectives.neighbours import nearest_neighbour, nearest_neighbour_with_index
from uamix_jax.objectives.queue import init_queue, update_queue


def unit_rows(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def lookup_problem(seed, batch=8, size=64, dim=6):
    """A queue holding noisy copies of the batch under the batch's own ids, so own-id exclusion changes answers."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(batch, dim)) * rng.uniform(0.5, 3.0, size=(batch, 1))  # z is not normalised
    queue = unit_rows(rng, size, dim)
    queue_ids = rng.integers(100, 140, size=size)
    sample_ids = np.arange(batch) + 100
    copies = rng.choice(size, batch, replace=False)
    queue[copies] = unit_rows(rng, 1, dim) * 0.0 + z / np.linalg.norm(z, axis=1, keepdims=True)
    queue_ids[copies] = sample_ids
    return z, queue, queue_ids.astype(np.int32), sample_ids.astype(np.int32), copies


def np_ranked(z, queue, queue_ids, sample_ids):
    """Queue indices per sample, most similar first, own ids removed (brute force, float64)."""
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = zn @ queue.T
    out = []
    for i in range(len(z)):
        allowed = np.flatnonzero(queue_ids != sample_ids[i])
        out.append(allowed[np.argsort(-sim[i, allowed], kind="stable")])
    return out


def as_jnp(*arrays):
    return [jnp.asarray(a, jnp.float32 if np.issubdtype(a.dtype, np.floating) else jnp.int32) for a in arrays]


# ---- nearest neighbour --------------------------------------------------------------------------------------------
def test_top1_equals_brute_force_and_skips_own_copies():
    z, queue, queue_ids, sample_ids, copies = lookup_problem(0)
    nn, index = jax.jit(nearest_neighbour_with_index)(*as_jnp(z, queue, queue_ids, sample_ids))
    ranked = np_ranked(z, queue, queue_ids, sample_ids)
    np.testing.assert_array_equal(np.asarray(index), [r[0] for r in ranked])
    np.testing.assert_allclose(np.asarray(nn), queue[np.asarray(index)], atol=1e-7)
    assert np.all(np.asarray(index) != copies)  # each row's own exact copy (cosine 1) was excluded
    assert np.all(queue_ids[np.asarray(index)] != sample_ids)
    # Without the ids the copies win: the exclusion is what changed the answer.
    no_ids = nearest_neighbour_with_index(*as_jnp(z, queue, np.full_like(queue_ids, -1), sample_ids))[1]
    np.testing.assert_array_equal(np.asarray(no_ids), copies)


@pytest.mark.parametrize("top_k", [3, 5])
def test_top_k_picks_only_among_the_k_nearest_and_reaches_each_of_them(top_k):
    z, queue, queue_ids, sample_ids, _ = lookup_problem(1)
    ranked = np_ranked(z, queue, queue_ids, sample_ids)
    args = as_jnp(z, queue, queue_ids, sample_ids)
    draw = jax.jit(lambda k: nearest_neighbour_with_index(*args, top_k=top_k, key=k))
    seen = [set() for _ in range(len(z))]
    for seed in range(60):
        nn, index = draw(jax.random.key(seed))
        index = np.asarray(index)
        np.testing.assert_allclose(np.asarray(nn), queue[index], atol=1e-7)
        for i, j in enumerate(index):
            assert j in set(ranked[i][:top_k]), f"row {i} picked queue row {j}, not among its {top_k} nearest"
            assert queue_ids[j] != sample_ids[i]
            seen[i].add(int(j))
    # 60 uniform draws from k ≤ 5 candidates miss one with probability < 5·(4/5)^60 ≈ 1e-5 per row.
    assert all(s == set(ranked[i][:top_k].tolist()) for i, s in enumerate(seen))


def test_draws_depend_on_global_row_index_not_on_the_shard():
    z, queue, queue_ids, sample_ids, _ = lookup_problem(2)
    z, queue, queue_ids, sample_ids = as_jnp(z, queue, queue_ids, sample_ids)
    key = jax.random.key(9)
    whole = nearest_neighbour_with_index(z, queue, queue_ids, sample_ids, top_k=4, key=key)[1]
    part = nearest_neighbour_with_index(z[5:], queue, queue_ids, sample_ids[5:], top_k=4, key=key, first_index=5)[1]
    np.testing.assert_array_equal(np.asarray(part), np.asarray(whole[5:]))


def test_no_gradient_flows_through_the_neighbour():
    z, queue, queue_ids, sample_ids, _ = lookup_problem(3)
    z, queue, queue_ids, sample_ids = as_jnp(z, queue, queue_ids, sample_ids)
    g_z, g_q = jax.grad(lambda a, q: jnp.sum(nearest_neighbour(a, q, queue_ids, sample_ids) ** 3), (0, 1))(z, queue)
    np.testing.assert_array_equal(np.asarray(g_z), 0.0)
    np.testing.assert_array_equal(np.asarray(g_q), 0.0)


def test_lookup_errors():
    z, queue, queue_ids, sample_ids, _ = lookup_problem(4)
    args = as_jnp(z, queue, queue_ids, sample_ids)
    with pytest.raises(ValueError, match="pass key="):
        nearest_neighbour(*args, top_k=3)
    with pytest.raises(ValueError, match=r"top_k must be in \[1, K=64\]"):
        nearest_neighbour(*args, top_k=65, key=jax.random.key(0))
    with pytest.raises(ValueError, match="feature dims differ"):
        nearest_neighbour(args[0][:, :4], *args[1:])


# ---- queue ----------------------------------------------------------------------------------------------------------
def test_init_queue():
    queue, ids, labels, ptr = init_queue(jax.random.key(0), 32, 5)
    assert queue.shape == (32, 5) and queue.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(np.asarray(queue), axis=1), 1.0, atol=1e-6)
    assert np.unique(np.asarray(queue).round(5), axis=0).shape[0] == 32  # random, distinct rows
    np.testing.assert_array_equal(np.asarray(ids), -1)
    np.testing.assert_array_equal(np.asarray(labels), -1)
    assert ids.dtype == labels.dtype == ptr.dtype == jnp.int32 and int(ptr) == 0


def test_fifo_writes_every_row_once_in_order_with_ids_and_labels():
    size, batch, dim = 24, 6, 5
    rng = np.random.default_rng(0)
    queue, ids, labels, ptr = init_queue(jax.random.key(1), size, dim)
    update = jax.jit(lambda q, qi, ql, p, z, i, lab: update_queue(q, qi, p, z, i, labels=lab, queue_labels=ql))
    written = []
    for step in range(size // batch + 1):  # one full cycle, then one wrap-around
        z = rng.normal(size=(batch, dim)) * 4.0
        batch_ids = np.arange(batch) + 1000 * step
        batch_labels = rng.integers(0, 10, size=batch)
        queue, ids, labels, ptr = update(queue, ids, labels, ptr, *as_jnp(z, batch_ids, batch_labels))
        written.append((z / np.linalg.norm(z, axis=1, keepdims=True), batch_ids, batch_labels))
        assert int(ptr) == ((step + 1) * batch) % size
        if step == size // batch - 1:  # after K/B updates: every row written exactly once, in order
            np.testing.assert_allclose(np.asarray(queue), np.concatenate([w[0] for w in written]), atol=1e-6)
            np.testing.assert_array_equal(np.asarray(ids), np.concatenate([w[1] for w in written]))
            np.testing.assert_array_equal(np.asarray(labels), np.concatenate([w[2] for w in written]))
    # The next update overwrote the oldest rows only.
    np.testing.assert_allclose(np.asarray(queue[:batch]), written[-1][0], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(ids[:batch]), written[-1][1])
    np.testing.assert_allclose(np.asarray(queue[batch:]), np.concatenate([w[0] for w in written[1:-1]]), atol=1e-6)


def test_update_without_labels_and_from_an_unaligned_pointer():
    queue, ids, _, _ = init_queue(jax.random.key(2), 8, 3)
    z = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)), jnp.float32)
    new_q, new_ids, ptr = update_queue(queue, ids, jnp.int32(6), z, jnp.arange(4, dtype=jnp.int32))
    rows = np.array([6, 7, 0, 1])  # a pointer restored from a run with another batch size wraps row by row
    np.testing.assert_allclose(np.asarray(new_q[rows]), np.asarray(z / jnp.linalg.norm(z, axis=1, keepdims=True)),
                               atol=1e-6)
    np.testing.assert_array_equal(np.asarray(new_ids[rows]), np.arange(4))
    np.testing.assert_array_equal(np.asarray(new_q[2:6]), np.asarray(queue[2:6]))
    assert int(ptr) == 2


def test_queue_size_must_be_a_multiple_of_the_batch():
    queue, ids, labels, ptr = init_queue(jax.random.key(3), 10, 3)
    z, batch_ids = jnp.ones((4, 3)), jnp.arange(4, dtype=jnp.int32)
    with pytest.raises(ValueError, match=r"queue size K=10 must be a multiple of the global batch B=4"):
        jax.jit(update_queue)(queue, ids, ptr, z, batch_ids)
    with pytest.raises(ValueError, match="pass both labels="):
        update_queue(queue, ids, ptr, z, batch_ids, labels=batch_ids)
