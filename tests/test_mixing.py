"""T-CutMix, TF-CutMix, MixUp and group mixing: structure of the mixed batch, λ bookkeeping and λ's distribution."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from uamix_jax.objectives.mixing import mix_groups, mixup, sample_lambda, t_cutmix, tf_cutmix

B, T, F = 6, 40, 8
N_DRAWS = 2000


def random_batch(seed=0, shape=(B, T, F)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def box_of(mixed, x, perm):
    """Per row, the boolean [T, F] region taken from the partner, checking every entry is x[i] or x[perm[i]]."""
    mixed, x, perm = np.asarray(mixed), np.asarray(x), np.asarray(perm)
    own = mixed == x
    partner = mixed == x[perm]
    assert np.all(own | partner), "every entry must come from the sample itself or its partner"
    movable = perm != np.arange(len(perm))  # the middle of an odd group is its own partner
    assert not np.any((own & partner)[movable]), "random data: an entry cannot equal both"
    return partner & movable[:, None, None]


def draw_many(fn, n=N_DRAWS, x=None):
    """lam of `fn(key, x)` over n keys (vmap over keys; tiny x keeps it cheap)."""
    x = random_batch(1, (2, T, F)) if x is None else x
    keys = jax.random.split(jax.random.key(1234), n)
    return np.asarray(jax.jit(jax.vmap(lambda k: fn(k, x)[1]))(keys), np.float64)


# ---- λ ~ Beta(α, α) -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [1.0, 0.4, 2.0])
def test_sample_lambda_is_beta_alpha_alpha(alpha):
    keys = jax.random.split(jax.random.key(7), N_DRAWS)
    lam = np.asarray(jax.vmap(lambda k: sample_lambda(k, alpha))(keys), np.float64)
    assert lam.dtype == np.float64 and np.all((lam >= 0) & (lam <= 1))
    assert stats.kstest(lam, "beta", args=(alpha, alpha)).pvalue > 0.01
    # The KS check has power: the same draws are far from a Beta with another α.
    assert stats.kstest(lam, "beta", args=(alpha * 3, alpha * 3)).pvalue < 1e-4


def test_sample_lambda_shape_and_bad_alpha():
    assert sample_lambda(jax.random.key(0), 1.0, (3, 2)).shape == (3, 2)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        sample_lambda(jax.random.key(0), 0.0)


def test_mixup_lambda_is_beta():
    lam = draw_many(lambda k, x: mixup(k, x, 0.5))
    assert stats.kstest(lam, "beta", args=(0.5, 0.5)).pvalue > 0.01


def np_simulated_kept_fraction(rng, n, alpha, width, length=T, height=None):
    """The kept fraction λ' of the T-CutMix box (docs/method.md) from numpy: width T·√(1−λ) (or T·(1−λ)), start ~ U{0..T−1}, clipped."""
    lam = rng.beta(alpha, alpha, size=n)
    cut = np.sqrt(1.0 - lam) if width == "sqrt" else 1.0 - lam

    def clipped(size):
        w = np.round(cut * size)
        s = np.floor(rng.uniform(size=n) * size)
        return np.minimum(s + w, size) - s

    if height is None:
        return 1.0 - clipped(length) / length
    return 1.0 - clipped(length) * clipped(height) / (length * height)


@pytest.mark.parametrize("width", ["sqrt", "linear"])
def test_t_cutmix_kept_fraction_follows_the_box_rule(width):
    lam = draw_many(lambda k, x: t_cutmix(k, x, 1.0, width=width))
    want = np_simulated_kept_fraction(np.random.default_rng(0), 20000, 1.0, width)
    # Compared as integer cut lengths: float32 λ' sits a rounding error off numpy's float64 atoms.
    assert stats.ks_2samp(np.round((1 - lam) * T), np.round((1 - want) * T)).pvalue > 0.01
    # Closed form for a continuous box at α = 1 (docs/method.md, "T-CutMix"): E[cut] = 5/12 for 'sqrt', 1/3 for 'linear'.
    assert 1.0 - lam.mean() == pytest.approx(5 / 12 if width == "sqrt" else 1 / 3, abs=0.02)


def test_tf_cutmix_kept_fraction_follows_the_box_rule():
    lam = draw_many(lambda k, x: tf_cutmix(k, x, 1.0))
    want = np_simulated_kept_fraction(np.random.default_rng(0), 20000, 1.0, "sqrt", T, F)
    assert stats.ks_2samp(np.round((1 - lam) * T * F), np.round((1 - want) * T * F)).pvalue > 0.01
    # Closed form for a continuous box, E[(c − c²/2)²] = 11/60 with c = √U; a 64 × 64 grid is close to continuous.
    lam_fine = draw_many(lambda k, x: tf_cutmix(k, x, 1.0), x=random_batch(1, (2, 64, 64)))
    assert 1.0 - lam_fine.mean() == pytest.approx(11 / 60, abs=0.015)


# ---- structure of one mixed group ---------------------------------------------------------------------------------
@pytest.mark.parametrize("width", ["sqrt", "linear"])
def test_t_cutmix_replaces_one_time_interval_over_all_frequencies(width):
    x = random_batch(2)
    lengths = []
    for seed in range(12):
        mixed, lam, perm = t_cutmix(jax.random.key(seed), x, 1.0, width=width)
        assert mixed.shape == x.shape and mixed.dtype == x.dtype
        assert lam.shape == () and lam.dtype == jnp.float32 and perm.dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(perm), np.arange(B)[::-1])
        taken = box_of(mixed, x, perm)
        assert np.all(taken == taken[:1]), "one box per call, the same for every row"
        frames = taken[0].any(axis=1)
        assert np.all(taken[0][frames]), "the box covers all frequencies"
        idx = np.flatnonzero(frames)
        if idx.size:
            assert idx[-1] - idx[0] + 1 == idx.size, "one contiguous time interval"
        assert idx.size == pytest.approx((1.0 - float(lam)) * T, abs=1e-4)
        lengths.append(idx.size)
    assert len(set(lengths)) > 3  # the box size actually varies with the key


def test_tf_cutmix_replaces_one_rectangle():
    x = random_batch(3)
    for seed in range(12):
        mixed, lam, perm = tf_cutmix(jax.random.key(seed), x, 1.0)
        taken = box_of(mixed, x, perm)
        assert np.all(taken == taken[:1])
        rows, cols = taken[0].any(axis=1), taken[0].any(axis=0)
        np.testing.assert_array_equal(taken[0], np.outer(rows, cols), "the cut region is a rectangle")
        for axis in (rows, cols):
            idx = np.flatnonzero(axis)
            if idx.size:
                assert idx[-1] - idx[0] + 1 == idx.size
        assert taken[0].sum() == pytest.approx((1.0 - float(lam)) * T * F, abs=1e-3)


def test_mixup_is_the_convex_combination():
    x = random_batch(4)
    mixed, lam, perm = mixup(jax.random.key(0), x, 1.0)
    xn = np.asarray(x, np.float64)
    want = float(lam) * xn + (1.0 - float(lam)) * xn[::-1]
    np.testing.assert_allclose(np.asarray(mixed), want, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(perm), np.arange(B)[::-1])


def test_bfloat16_input_keeps_its_dtype():
    x = random_batch(5).astype(jnp.bfloat16)
    for fn in (t_cutmix, tf_cutmix, mixup):
        mixed, lam, _ = fn(jax.random.key(0), x)
        assert mixed.dtype == jnp.bfloat16 and lam.dtype == jnp.float32


# ---- groups -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["t_cutmix", "tf_cutmix", "mixup"])
def test_mix_groups_mixes_each_group_with_its_own_folded_key(method):
    x = random_batch(6, (12, T, F))
    key = jax.random.key(11)
    mixed, lam, perm = jax.jit(lambda k, v: mix_groups(k, v, group_size=4, method=method, first_group_index=5))(key, x)
    assert mixed.shape == x.shape and lam.shape == (12,) and perm.shape == (12,) and perm.dtype == jnp.int32
    single = {"t_cutmix": t_cutmix, "tf_cutmix": tf_cutmix, "mixup": mixup}[method]
    for g in range(3):
        rows = slice(4 * g, 4 * g + 4)
        m_g, lam_g, perm_g = single(jax.random.fold_in(key, 5 + g), x[rows])
        # jit may fuse the float arithmetic differently from the eager single-group call: compare to float32 ulps.
        np.testing.assert_allclose(np.asarray(mixed[rows]), np.asarray(m_g), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(lam[rows]), np.full(4, float(lam_g)), rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(perm[rows]), np.asarray(perm_g) + 4 * g)
    assert len(set(np.asarray(lam).tolist())) == 3  # three groups, three independent draws


def test_mix_groups_partners_stay_inside_the_group():
    x = random_batch(7, (12, T, F))
    mixed, lam, perm = jax.jit(lambda k, v: mix_groups(k, v, group_size=3))(jax.random.key(3), x)
    perm = np.asarray(perm)
    np.testing.assert_array_equal(perm // 3, np.arange(12) // 3)
    np.testing.assert_array_equal(perm, np.concatenate([np.arange(3 * g + 2, 3 * g - 1, -1) for g in range(4)]))
    taken = box_of(mixed, x, perm)
    for i in range(12):
        if perm[i] != i:  # a group's middle row is its own partner and stays unchanged
            assert taken[i].sum() == pytest.approx((1.0 - float(lam[i])) * T * F, abs=1e-3)


def test_mix_groups_shard_with_offset_equals_slice_of_whole_batch():
    x = random_batch(8, (16, T, F))
    key = jax.random.key(5)
    mix = jax.jit(mix_groups, static_argnames=("group_size", "width"))
    whole = mix(key, x, group_size=4, width="linear")
    part = mix(key, x[8:], group_size=4, first_group_index=2, width="linear")
    np.testing.assert_array_equal(np.asarray(part[0]), np.asarray(whole[0][8:]))
    np.testing.assert_array_equal(np.asarray(part[1]), np.asarray(whole[1][8:]))
    np.testing.assert_array_equal(np.asarray(part[2]) + 8, np.asarray(whole[2][8:]))


def test_mix_groups_none_is_identity():
    x = random_batch(9)
    mixed, lam, perm = mix_groups(jax.random.key(0), x, group_size=3, method="none")
    np.testing.assert_array_equal(np.asarray(mixed), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(lam), np.ones(B, np.float32))
    np.testing.assert_array_equal(np.asarray(perm), np.arange(B))


def test_mix_groups_errors_name_the_problem():
    x = random_batch(10)
    with pytest.raises(ValueError, match=r"batch size 6 .* multiple of group_size=4"):
        mix_groups(jax.random.key(0), x, group_size=4)
    with pytest.raises(ValueError, match="unknown method 'cutout'"):
        mix_groups(jax.random.key(0), x, group_size=3, method="cutout")
    with pytest.raises(ValueError, match="width must be 'sqrt'"):
        t_cutmix(jax.random.key(0), x, width="square")
