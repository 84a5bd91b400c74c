"""Episode sampling: distinct classes, disjoint support/query, per-class query counts, reproducibility, uniformity."""
import numpy as np
import pytest

from uamix_jax.evaluation.episodes import class_members, sample_episodes


def _labels(counts, seed=0):
    """Labels with counts[c] clips of class c, shuffled, plus a few unlabelled (-1) rows."""
    labels = np.concatenate([np.full(n, c, np.int32) for c, n in enumerate(counts)] + [np.full(3, -1, np.int32)])
    return np.random.default_rng(seed).permutation(labels)


def test_class_members_groups_rows_by_label():
    labels = np.array([2, -1, 0, 2, 5, 0, 2], np.int32)
    ids, counts, rows = class_members(labels)
    np.testing.assert_array_equal(ids, [0, 2, 5])
    np.testing.assert_array_equal(counts, [2, 3, 1])
    np.testing.assert_array_equal(rows, [2, 5, 0, 3, 6, 4])


@pytest.mark.parametrize("ways, shots, queries", [(5, 1, 15), (10, 5, 4), (3, 2, 1)])
def test_episode_properties(ways, shots, queries):
    labels = _labels([40] * 12)
    eps = sample_episodes(labels, ways=ways, shots=shots, queries=queries, episodes=200, seed=3)
    assert eps.support.shape == (200, ways, shots) and eps.query.shape == (200, ways, queries)
    assert eps.classes.shape == (200, ways) and eps.query_mask.all()
    for e in range(200):
        # classes distinct within the episode
        assert len(set(eps.classes[e].tolist())) == ways
        # every support / query clip has its slot's class
        assert (labels[eps.support[e]] == eps.classes[e][:, None]).all()
        assert (labels[eps.query[e]] == eps.classes[e][:, None]).all()
        # support and query disjoint, and no clip drawn twice
        clips = np.concatenate([eps.support[e].ravel(), eps.query[e].ravel()])
        assert np.unique(clips).size == clips.size
    assert (labels[eps.support] >= 0).all()


def test_reproducible_from_seed_and_different_across_seeds():
    labels = _labels([30] * 8, seed=1)
    a = sample_episodes(labels, ways=5, shots=1, queries=15, episodes=50, seed=7)
    b = sample_episodes(labels, ways=5, shots=1, queries=15, episodes=50, seed=7)
    c = sample_episodes(labels, ways=5, shots=1, queries=15, episodes=50, seed=8)
    for name in ("support", "query", "query_mask", "classes"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.support, c.support)


def test_short_classes_get_fewer_queries_and_tiny_classes_are_skipped():
    # class 0: 4 clips (K=1 leaves 3 queries), class 1: 1 clip (cannot take part), others 20 clips
    labels = _labels([4, 1, 20, 20, 20, 20])
    eps = sample_episodes(labels, ways=5, shots=1, queries=15, episodes=300, seed=0)
    assert eps.queries_per_class == {0: 3, 2: 15, 3: 15, 4: 15, 5: 15}
    assert eps.short_classes == {0: 3}
    assert 1 not in eps.classes
    valid = eps.query_mask.sum(axis=2)  # [E, N]
    np.testing.assert_array_equal(valid, np.where(eps.classes == 0, 3, 15))
    # every one of class 0's clips appears once per episode that draws it (1 support + 3 queries = all 4)
    for e, n in zip(*np.nonzero(eps.classes == 0)):
        used = np.concatenate([eps.support[e, n], eps.query[e, n][eps.query_mask[e, n]]])
        np.testing.assert_array_equal(np.sort(used), np.sort(np.flatnonzero(labels == 0)))


def test_too_few_classes_is_an_error_naming_the_need():
    labels = _labels([10, 10, 1])
    with pytest.raises(ValueError, match=r"3-way 1-shot episodes need 3 classes with at least 2"):
        sample_episodes(labels, ways=3, shots=1, queries=5, episodes=10, seed=0)
    with pytest.raises(ValueError, match="shots must be >= 1"):
        sample_episodes(labels, ways=2, shots=0, queries=5, episodes=10, seed=0)


def test_draws_are_uniform():
    """Floyd's subsets + shuffle: each clip of a class is the support clip equally often, and each class is drawn
    equally often (chi-square-style bounds at ~5 standard deviations)."""
    labels = np.repeat(np.arange(6, dtype=np.int32), 7)
    eps = sample_episodes(labels, ways=3, shots=1, queries=2, episodes=42000, seed=11)
    class_freq = np.bincount(eps.classes.ravel(), minlength=6) / eps.classes.size
    assert np.abs(class_freq - 1 / 6).max() < 5 * np.sqrt((1 / 6) * (5 / 6) / eps.classes.size)
    support_freq = np.bincount(eps.support.ravel(), minlength=42).reshape(6, 7)
    p = support_freq / support_freq.sum(axis=1, keepdims=True)
    n_per_class = support_freq.sum(axis=1, keepdims=True)
    assert np.abs(p - 1 / 7).max() < 5 * np.sqrt((1 / 7) * (6 / 7) / n_per_class.min())
    # queries too: every clip is a query equally often given its class was drawn
    query_freq = np.bincount(eps.query.ravel(), minlength=42).reshape(6, 7)
    q = query_freq / query_freq.sum(axis=1, keepdims=True)
    assert np.abs(q - 1 / 7).max() < 5 * np.sqrt((1 / 7) * (6 / 7) / query_freq.sum(axis=1).min())
