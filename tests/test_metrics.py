"""mAP and top-1 accuracy: scikit-learn as the oracle, a hand-computed AP, classes without positives, padded batches."""
import os

import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import average_precision_score

from uamix_jax.data.layouts import read_dataset
from uamix_jax.data.pipeline import make_pipeline
from uamix_jax.evaluation.metrics import (
    ScoreTable, average_precision_per_class, mean_average_precision, top1_accuracy)


def test_map_equals_sklearn_macro_with_ties():
    rng = np.random.default_rng(0)
    targets = rng.random((200, 12)) < 0.2
    targets[0] = True  # every class has a positive
    scores = np.round(rng.standard_normal((200, 12)), 1)  # many tied scores per class
    assert len(np.unique(scores[:, 0])) < 100
    want = average_precision_score(targets, scores, average="macro")
    got = mean_average_precision(scores, targets)
    np.testing.assert_allclose(got["map"], want, rtol=0, atol=1e-12)
    assert got["classes_counted"] == 12


def test_ap_known_value_and_tie_handling():
    # ranks: + (P=1, R=1/2), - , + (P=2/3, R=1): AP = 1/2·1 + 1/2·2/3
    ap = average_precision_per_class(np.array([[0.9], [0.8], [0.7]]), np.array([[1], [0], [1]]))
    np.testing.assert_allclose(ap, [0.5 + 1 / 3], atol=1e-12)
    # a tie between a positive and a negative is one threshold: P = 1/2 at R = 1 → AP = 1/2, in either row order
    for order in ([0, 1], [1, 0]):
        ap = average_precision_per_class(np.array([[0.5], [0.5]])[order], np.array([[1], [0]])[order])
        np.testing.assert_allclose(ap, [0.5], atol=1e-12)


def test_classes_without_positive_are_left_out_of_the_mean():
    rng = np.random.default_rng(1)
    targets = rng.random((50, 6)) < 0.3
    targets[0, :] = True
    targets[:, [2, 4]] = False  # classes 2 and 4 have no positive
    scores = rng.standard_normal((50, 6))
    ap = average_precision_per_class(scores, targets)
    assert np.isnan(ap[[2, 4]]).all() and np.isfinite(ap[[0, 1, 3, 5]]).all()
    kept = [0, 1, 3, 5]
    want = average_precision_score(targets[:, kept], scores[:, kept], average="macro")
    got = mean_average_precision(scores, targets)
    np.testing.assert_allclose(got["map"], want, atol=1e-12)
    assert got["classes_counted"] == 4
    with pytest.warns(UserWarning):  # scikit-learn itself would score them 0 and pull the mean down by 2/6
        sk = average_precision_score(targets, scores, average="macro")
    np.testing.assert_allclose(sk, want * 4 / 6, atol=1e-12)
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(scores, np.zeros_like(targets))


def test_top1_accuracy_mask_and_ties():
    scores = np.array([[0.1, 0.9, 0.0], [0.5, 0.5, 0.0], [0.2, 0.1, 0.7], [9.0, 0.0, 0.0]])
    labels = np.array([1, 0, 0, 1])
    # row 1's tie goes to class 0 (right); row 3 is masked out (wrong, would lower the accuracy)
    assert top1_accuracy(scores, labels, np.array([True, True, True, False])) == pytest.approx(2 / 3)
    assert top1_accuracy(scores, labels) == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="label -1"):
        top1_accuracy(scores, np.array([1, 0, -1, 1]))


def test_padded_batches_count_each_clip_once(tmp_path):
    """7 clips in batches of 4: the pipeline pads the second batch with one masked row; every clip counts once."""
    rng = np.random.default_rng(2)
    for c in range(2):
        for k in range(4 if c == 0 else 3):
            path = tmp_path / f"class{c}" / f"clip{k}.wav"
            os.makedirs(path.parent, exist_ok=True)
            sf.write(path, (0.1 * rng.standard_normal(800)).astype(np.float32), 16000)
    manifest = read_dataset("folder", str(tmp_path))
    assert len(manifest) == 7
    scores_of_clip = rng.standard_normal((7, 2)).astype(np.float32)
    table = ScoreTable(7, 2)
    batches = 0
    for batch in make_pipeline(manifest, batch_size=4, clip_samples=800, seed=0, train=False, num_epochs=1,
                               drop_remainder=False):
        batches += 1
        scores = np.where(batch["mask"][:, None], scores_of_clip[np.maximum(batch["index"], 0)], 100.0)
        table.add(batch["index"], scores, batch["mask"])
    assert batches == 2 and table.seen.all()
    np.testing.assert_array_equal(table.scores, scores_of_clip)
    onehot = np.eye(2, dtype=bool)[manifest.labels]
    assert table.metric("accuracy", manifest.labels) == top1_accuracy(scores_of_clip, manifest.labels)
    np.testing.assert_allclose(table.metric("map", onehot), average_precision_score(onehot, scores_of_clip), atol=1e-12)
    # a clip delivered twice (a bad clip's replacement) keeps one row
    table.add(np.array([3, 3, -1]), np.full((3, 2), 5.0, np.float32), np.array([True, True, False]))
    assert table.seen.sum() == 7
    with pytest.raises(IndexError):
        table.add(np.array([7]), np.zeros((1, 2), np.float32), np.array([True]))
