"""The vectorised nearest-centroid evaluator: a numpy loop oracle, known answers, the CI formula, input checks."""
import math

import numpy as np
import pytest

from uamix_jax.evaluation.episodes import sample_episodes
from uamix_jax.evaluation.fewshot import (
    confidence_interval, episode_accuracies, episodes_hash, evaluate_fewshot, fewshot_record)


def _oracle(embeddings, support, query, query_mask):
    """Prototypical networks written plainly: one episode, one query at a time, float64."""
    x = np.asarray(embeddings, np.float64)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = []
    for e in range(support.shape[0]):
        centroids = [unit[support[e, n]].mean(axis=0) for n in range(support.shape[1])]
        correct = total = 0
        for n in range(query.shape[1]):
            for j in range(query.shape[2]):
                if not query_mask[e, n, j]:
                    continue
                q = unit[query[e, n, j]]
                distances = [np.sum((q - c) ** 2) for c in centroids]
                correct += int(np.argmin(distances) == n)
                total += 1
        out.append(correct / total)
    return np.array(out)


def _clustered(num_classes, per_class, dim, spread, seed):
    """Embeddings around one random centre per class (not normalised; scale varies per clip)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, dim))
    labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    x = centres[labels] + spread * rng.standard_normal((labels.size, dim))
    x *= rng.uniform(0.5, 3.0, (labels.size, 1))  # the evaluator must normalise
    return x.astype(np.float32), labels


@pytest.mark.parametrize("ways, shots, queries, spread", [(5, 1, 15, 1.2), (5, 5, 7, 1.5), (10, 3, 4, 1.0)])
def test_vectorised_equals_numpy_loop_exactly(ways, shots, queries, spread):
    x, labels = _clustered(12, 25, 16, spread, seed=ways + shots)
    # class 0 keeps shots + 2 clips, fewer than shots + queries: some query slots are masked
    keep = (labels != 0) | (np.cumsum(labels == 0) <= shots + 2)
    x, labels = x[keep], labels[keep]
    eps = sample_episodes(labels, ways=ways, shots=shots, queries=queries, episodes=120, seed=5)
    assert not eps.query_mask.all()
    acc = episode_accuracies(x, eps.support, eps.query, eps.query_mask)
    ref = _oracle(x, eps.support, eps.query, eps.query_mask)
    assert acc.dtype == np.float64 and acc.shape == (120,)
    assert 0.2 < ref.mean() < 0.95, "the data should make mistakes and successes, or the comparison says little"
    np.testing.assert_array_equal(acc, ref)


def test_chunking_does_not_change_results(monkeypatch):
    from uamix_jax.evaluation import fewshot

    x, labels = _clustered(8, 20, 32, 1.0, seed=2)
    eps = sample_episodes(labels, ways=5, shots=2, queries=6, episodes=37, seed=1)
    whole = episode_accuracies(x, eps.support, eps.query, eps.query_mask)
    # a budget of ~3 episodes per chunk: 12 full chunks and a remainder of 1
    monkeypatch.setattr(fewshot, "_CHUNK_BYTES", 3 * 5 * 8 * 32 * 4)
    assert fewshot._chunk_size(37, 5, 8, 32) == 3
    chunked = episode_accuracies(x, eps.support, eps.query, eps.query_mask)
    np.testing.assert_array_equal(chunked, whole)


def test_separable_embeddings_give_100_percent():
    # each class on its own axis, with noise well inside the margin
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20, dtype=np.int32), 10)
    x = np.eye(20, 64)[labels] + 0.05 * rng.standard_normal((200, 64))
    for ways, shots in [(5, 1), (20, 5)]:
        result = evaluate_fewshot(x.astype(np.float32), labels, ways=ways, shots=shots, queries=5, episodes=100,
                                  seed=0)
        assert result["accuracy_mean"] == 100.0 and result["ci95"] == 0.0


@pytest.mark.parametrize("ways", [5, 10])
def test_label_independent_embeddings_give_chance_within_the_ci(ways):
    rng = np.random.default_rng(ways)
    x = rng.standard_normal((2000, 64)).astype(np.float32)
    labels = rng.permutation(np.repeat(np.arange(20, dtype=np.int32), 100))
    result = evaluate_fewshot(x, labels, ways=ways, shots=1, queries=15, episodes=600, seed=0)
    chance = 100.0 / ways
    assert abs(result["accuracy_mean"] - chance) <= result["ci95"], (result["accuracy_mean"], result["ci95"])
    # the CI is not vacuous: about 1.96 * sqrt(p (1 - p) / (N Q)) / sqrt(E) for independent queries
    expected = 100 * 1.96 * math.sqrt(chance / 100 * (1 - chance / 100) / (ways * 15)) / math.sqrt(600)
    assert 0.7 * expected < result["ci95"] < 1.5 * expected


def test_ci_is_1_96_std_over_sqrt_episodes():
    acc = np.array([0.2, 0.6, 0.4, 1.0, 0.8])
    mean, ci = confidence_interval(acc)
    # std (ddof 0) of [.2 .6 .4 1. .8] is sqrt(0.08); mean 0.6
    assert mean == pytest.approx(0.6, abs=1e-15)
    assert ci == pytest.approx(1.96 * math.sqrt(0.08) / math.sqrt(5), rel=1e-12)

    x, labels = _clustered(10, 20, 16, 1.5, seed=9)
    eps = sample_episodes(labels, ways=5, shots=1, queries=10, episodes=600, seed=2)
    per_episode = episode_accuracies(x, eps.support, eps.query, eps.query_mask)
    record = fewshot_record(eps, per_episode, seed=2, num_clips=len(labels))
    assert record["accuracy_mean"] == pytest.approx(100 * per_episode.mean(), rel=1e-12)
    assert record["ci95"] == pytest.approx(1.96 * np.std(100 * per_episode) / math.sqrt(600), rel=1e-12)
    assert record["episodes_sha256"] == episodes_hash(eps)
    again = sample_episodes(labels, ways=5, shots=1, queries=10, episodes=600, seed=2)
    other = sample_episodes(labels, ways=5, shots=1, queries=10, episodes=600, seed=3)
    assert episodes_hash(again) == episodes_hash(eps) != episodes_hash(other)


def test_result_fields_and_short_classes():
    x, labels = _clustered(6, 20, 8, 1.0, seed=4)
    labels[labels == 3] = np.where(np.arange(20) < 5, 3, -1)  # class 3 keeps 5 clips: 4 queries at K = 1
    result = evaluate_fewshot(x, labels, ways=5, shots=1, queries=15, episodes=50, seed=3)
    assert result["queries"] == 15 and result["queries_min"] == 4
    assert result["short_classes"] == {"3": 4}
    assert result["num_classes"] == 6 and result["num_clips"] == 105
    assert (result["ways"], result["shots"], result["episodes"], result["seed"]) == (5, 1, 50, 3)


def test_bad_inputs_are_named():
    x = np.zeros((10, 4), np.float32)
    support = np.zeros((2, 2, 1), np.int32)
    with pytest.raises(IndexError, match=r"query indices must lie in \[0, 10\)"):
        episode_accuracies(x, support, np.full((2, 2, 3), 10, np.int32))
    with pytest.raises(TypeError, match="integer index arrays"):
        episode_accuracies(x, support.astype(np.float32), np.zeros((2, 2, 3), np.int32))
    with pytest.raises(ValueError, match="one row per clip"):
        evaluate_fewshot(x, np.zeros(9, np.int32))
