"""AudioMAE's 2-D token masking: exactly int(T'·0.8) whole time rows × int(F'·0.8) whole frequency columns."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uamix_jax.models.masking import kept_counts, structured_keep_indices
from uamix_jax.models.vit import AudioMAEEncoder


@pytest.mark.parametrize("target_length, n_t, n_f", [(1024, 51, 6), (512, 25, 6), (128, 6, 6)])
def test_keeps_whole_rows_and_columns(target_length, n_t, n_f):
    t_p, f_p = target_length // 16, 8
    assert kept_counts(t_p, f_p, 0.2, 0.2) == (n_t, n_f)
    index = jnp.arange(40, dtype=jnp.int32) * 7 + 3
    keep = np.asarray(jax.jit(lambda k, i: structured_keep_indices(k, i, time_patches=t_p, freq_patches=f_p))(
        jax.random.key(0), index))
    assert keep.shape == (40, n_t * n_f) and keep.dtype == np.int32
    for row in keep:
        t, f = row // f_p, row % f_p
        rows, cols = np.unique(t), np.unique(f)
        assert len(rows) == n_t and len(cols) == n_f
        # the kept set is exactly every (kept row, kept column) cell: whole rows and whole columns
        want = (rows[:, None] * f_p + cols[None, :]).reshape(-1)
        np.testing.assert_array_equal(row, want)
    assert len({tuple(r) for r in keep}) == 40  # each clip draws its own


def test_draw_follows_the_sample_index_not_the_batch_position():
    draw = jax.jit(lambda k, i: structured_keep_indices(k, i, time_patches=32, freq_patches=8))
    key = jax.random.key(5)
    a = np.asarray(draw(key, jnp.array([10, 11, 12, 13])))
    b = np.asarray(draw(key, jnp.array([12, 13])))  # e.g. another device's half
    np.testing.assert_array_equal(a[2:], b)
    c = np.asarray(draw(jax.random.key(6), jnp.array([10, 11, 12, 13])))
    assert not np.array_equal(a, c)


def test_rows_are_kept_uniformly():
    """Over 2000 clips every time row is kept with probability n_t / T' = 25/32 (±0.04 ≈ 4.3σ)."""
    keep = np.asarray(structured_keep_indices(jax.random.key(1), jnp.arange(2000, dtype=jnp.int32),
                                              time_patches=32, freq_patches=8))
    counts = np.zeros(32)
    for row in keep:
        counts[np.unique(row // 8)] += 1
    np.testing.assert_allclose(counts / 2000, 25 / 32, atol=0.04)


def test_encoder_runs_on_the_kept_tokens():
    """The encoder with keep = the whole grid equals the unmasked encoder; with the mask it sees n_t·n_f tokens."""
    enc = AudioMAEEncoder.from_size("test", target_length=128, pooling="fc_norm", posemb="audiomae")
    x = jax.random.normal(jax.random.key(0), (3, 128, 128))
    variables = jax.jit(enc.init)(jax.random.key(1), x)
    full = jnp.broadcast_to(jnp.arange(64, dtype=jnp.int32), (3, 64))
    keep = structured_keep_indices(jax.random.key(2), jnp.arange(3, dtype=jnp.int32), time_patches=8, freq_patches=8)
    apply = jax.jit(lambda v, x, k: enc.apply(v, x, keep=k))
    with jax.default_matmul_precision("highest"):
        _, emb = jax.jit(enc.apply)(variables, x)
        _, emb_full = apply(variables, x, full)
        tokens, _ = apply(variables, x, keep)
    np.testing.assert_allclose(emb_full, emb, atol=1e-6)
    assert tokens.shape == (3, 1 + 36, 32)


def test_rejects_masks_that_keep_nothing():
    with pytest.raises(ValueError, match="at least one"):
        kept_counts(8, 8, 0.95, 0.2)
    with pytest.raises(ValueError, match="mask_t_prob"):
        kept_counts(8, 8, 1.0, 0.2)
