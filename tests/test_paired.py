"""Paired comparisons of encoders on the same episodes: numpy / scipy oracles, an encoder against itself, coverage."""
import math

import numpy as np
import pytest
from scipy import stats

from uamix_jax.evaluation.paired import paired_difference, paired_over_seeds


def _episodes(rng, n, p):
    """Per-episode accuracies in percent of 15-query episodes whose true accuracy is p."""
    return 100.0 * rng.binomial(15, p, n) / 15


def test_paired_difference_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = _episodes(rng, 600, 0.6), _episodes(rng, 600, 0.5)
    d = a - b
    got = paired_difference(a, b)
    half = 1.96 * d.std() / math.sqrt(d.size)
    assert got["mean"] == pytest.approx(d.mean(), abs=1e-12)
    assert (got["ci95_low"], got["ci95_high"]) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-12)
    assert (got["wins"], got["ties"], got["losses"]) == (int((d > 0).sum()), int((d == 0).sum()), int((d < 0).sum()))
    assert got["wins"] + got["ties"] + got["losses"] == 600


def test_over_seeds_matches_numpy_and_scipy():
    rng = np.random.default_rng(1)
    a = [_episodes(rng, 200, p) for p in (0.62, 0.58, 0.66)]
    b = [_episodes(rng, 200, 0.55) for _ in range(3)]
    got = paired_over_seeds(a, b)
    means = np.array([(x - y).mean() for x, y in zip(a, b)])
    half = stats.t.ppf(0.975, 2) * means.std(ddof=1) / math.sqrt(3)
    assert stats.t.ppf(0.975, 2) == pytest.approx(4.30, abs=5e-3)
    assert got["mean"] == pytest.approx(means.mean(), abs=1e-12)
    assert (got["ci95_low"], got["ci95_high"]) == pytest.approx((means.mean() - half, means.mean() + half), abs=1e-12)
    pooled = np.concatenate(a) - np.concatenate(b)
    pooled_half = 1.96 * pooled.std() / math.sqrt(pooled.size)
    assert (got["episode_ci95_low"], got["episode_ci95_high"]) == pytest.approx(
        (pooled.mean() - pooled_half, pooled.mean() + pooled_half), abs=1e-12)
    assert (got["wins"], got["ties"], got["losses"]) == (int((pooled > 0).sum()), int((pooled == 0).sum()),
                                                         int((pooled < 0).sum()))
    assert got["seed_means"] == pytest.approx(means.tolist()) and got["seeds"] == 3
    one = paired_over_seeds(a[:1], b[:1])  # one seed: the episode interval stands in for the seed-level one
    ref = paired_difference(a[0], b[0])
    assert (one["ci95_low"], one["ci95_high"]) == pytest.approx((ref["ci95_low"], ref["ci95_high"]))


def test_an_encoder_against_itself_is_zero_with_no_wins_or_losses():
    rng = np.random.default_rng(2)
    a = _episodes(rng, 300, 0.5)
    same = paired_difference(a, a)
    assert same["mean"] == same["ci95_low"] == same["ci95_high"] == 0.0
    assert (same["wins"], same["ties"], same["losses"]) == (0, 300, 0)
    seeds = paired_over_seeds([a, a], [a, a])
    assert seeds["mean"] == seeds["ci95_low"] == seeds["ci95_high"] == 0.0 and seeds["wins"] == seeds["losses"] == 0


def test_intervals_cover_a_known_difference_in_about_95_percent_of_draws():
    """1,000 simulated comparisons with a known true difference: each 95 % interval holds it 90-99 % of the time.

    Episode interval: one seed, 300 episodes whose paired difference has mean δ = 4 points. Seed-level interval:
    3 seeds, each seed shifting both its encoder's episodes by a seed effect u_s ~ N(0, 3²) around δ, so the
    between-seed spread dominates and only the t-interval (not the pooled episode one) accounts for it."""
    rng = np.random.default_rng(3)
    delta, draws = 4.0, 1000
    covered_episode = covered_seed = covered_pooled = 0
    for _ in range(draws):
        base = _episodes(rng, 300, 0.5)
        noise = rng.normal(delta, 12.0, 300)
        d = paired_difference(base + noise, base)
        covered_episode += d["ci95_low"] <= delta <= d["ci95_high"]
        u = rng.normal(0.0, 3.0, 3)
        a = [base + rng.normal(delta + u_s, 12.0, 300) for u_s in u]
        s = paired_over_seeds(a, [base] * 3)
        covered_seed += s["ci95_low"] <= delta <= s["ci95_high"]
        covered_pooled += s["episode_ci95_low"] <= delta <= s["episode_ci95_high"]
    assert 0.90 <= covered_episode / draws <= 0.99, covered_episode
    assert 0.90 <= covered_seed / draws <= 0.99, covered_seed
    assert covered_pooled / draws < 0.80  # the pooled episode interval ignores seed variance: it undercovers


def test_mismatched_inputs_are_errors():
    with pytest.raises(ValueError, match="same episodes"):
        paired_difference(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="one accuracy array per seed"):
        paired_over_seeds([np.zeros(3)], [])
