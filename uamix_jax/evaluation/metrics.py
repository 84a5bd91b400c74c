"""Classification metrics of the paper's Table 4 on padded evaluation batches: mAP (multi-label) and top-1 accuracy.

    mAP   = (1 / |C⁺|) Σ_{c ∈ C⁺} AP_c,   AP_c = Σ_n (R_n − R_{n−1}) P_n   (scikit-learn's step-wise AP, ties as one
            threshold; C⁺ = the classes with at least one positive among the evaluated clips)
    top-1 = (1 / N) Σ_i [argmax_c s_ic = y_i]

AudioMAE's `util/stat.py` computes AP_c per class with `sklearn.metrics.average_precision_score` on the raw logits and
averages over all 527 classes. A class without any positive clip has no defined AP (no recall to reach); scikit-learn
warns and scores it 0, which would pull the mean down for a reason that has nothing to do with the model. Here such
a class gets AP = NaN and is left out of the mean (`classes_counted` says how many were counted). On AudioSet's eval
set every class has positives, so the number is AudioMAE's.

Evaluation batches are padded (the pipeline's last batch carries rows with mask = False) and a clip that fails to load
is replaced by another clip; `ScoreTable` therefore stores scores by clip index, so every clip counts exactly once
however the batches fall, and the clips never delivered are known.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score

METRICS = ("map", "accuracy")


def _rows(mask: np.ndarray | None, n: int) -> np.ndarray:
    if mask is None:
        return np.ones((n,), bool)
    mask = np.asarray(mask, bool)
    if mask.shape != (n,):
        raise ValueError(f"metrics: mask has shape {mask.shape}, expected ({n},) (one flag per score row)")
    return mask


def average_precision_per_class(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """AP_c for every class c: float64 [C], NaN for classes with no positive among the valid rows.

    scores [N, C] (logits or probabilities: AP depends only on the order), targets [N, C] multi-hot (bool, 0/1 or
    soft labels ≥ 0.5 counted as positive), mask [N] bool (None: every row).
    """
    scores, targets = np.asarray(scores), np.asarray(targets)
    if scores.ndim != 2 or targets.shape != scores.shape:
        raise ValueError(f"average_precision_per_class: scores {scores.shape} and targets {targets.shape} must both "
                         f"be [N, C]")
    rows = _rows(mask, scores.shape[0])
    positive = np.asarray(targets[rows], np.float64) >= 0.5
    ap = np.full((scores.shape[1],), np.nan)
    counted = positive.any(axis=0)
    if counted.any():
        with warnings.catch_warnings():  # only classes with positives are passed, but keep sklearn quiet regardless
            warnings.simplefilter("ignore", UserWarning)
            valid_scores = np.asarray(scores[rows], np.float64)[:, counted]
            ap[counted] = average_precision_score(positive[:, counted], valid_scores, average=None)
    return ap


def mean_average_precision(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """{'map': mean AP over the classes with a positive, 'classes_counted': |C⁺|} (see the module docstring)."""
    ap = average_precision_per_class(scores, targets, mask)
    counted = int(np.sum(~np.isnan(ap)))
    if counted == 0:
        raise ValueError("mean_average_precision: no class has a positive clip among the evaluated rows; mAP is "
                         "undefined (check the evaluation split's labels)")
    return {"map": float(np.nanmean(ap)), "classes_counted": counted}


def top1_accuracy(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fraction of valid rows whose highest score is the label: scores [N, C], labels [N] int, mask [N] bool.

    Ties go to the lowest class index (numpy's argmax), as torch's `topk` does for timm's `accuracy`.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"top1_accuracy: scores must be [N, C] and labels [N], got {scores.shape} and {labels.shape}")
    rows = _rows(mask, scores.shape[0])
    if not rows.any():
        raise ValueError("top1_accuracy: no valid rows to evaluate")
    if labels[rows].min() < 0:
        raise ValueError("top1_accuracy: a valid row has label -1 (unknown); mask it out or fix the split's labels")
    return float(accuracy_score(labels[rows], np.argmax(scores[rows], axis=1)))


class ScoreTable:
    """Scores of a whole evaluation set, filled batch by batch and stored by clip index.

    `add(index [b], scores [b, C], mask [b])` writes the rows whose mask is True at their clip index (a clip delivered
    twice — e.g. as the replacement of a clip that failed to load — keeps one row). `seen` [M] says which clips have
    scores; `metric(name, targets)` evaluates over the seen clips only.
    """

    def __init__(self, num_clips: int, num_classes: int):
        if num_clips < 1 or num_classes < 1:
            raise ValueError(f"ScoreTable needs at least one clip and one class, got {num_clips}, {num_classes}")
        self.scores = np.zeros((num_clips, num_classes), np.float32)
        self.seen = np.zeros((num_clips,), bool)

    def add(self, index: np.ndarray, scores: np.ndarray, mask: np.ndarray) -> int:
        """Stores the valid rows; returns how many there were."""
        index, scores, mask = np.asarray(index), np.asarray(scores), np.asarray(mask, bool)
        if scores.shape != (index.shape[0], self.scores.shape[1]) or mask.shape != index.shape:
            raise ValueError(f"ScoreTable.add: index {index.shape}, scores {scores.shape}, mask {mask.shape}; expected "
                             f"[b], [b, {self.scores.shape[1]}], [b]")
        rows = index[mask]
        if rows.size and (rows.min() < 0 or rows.max() >= self.seen.shape[0]):
            raise IndexError(f"ScoreTable.add: clip index outside [0, {self.seen.shape[0]}) on a valid row")
        self.scores[rows] = scores[mask]
        self.seen[rows] = True
        return int(rows.size)

    def metric(self, name: str, targets: np.ndarray) -> float:
        """'map' with multi-hot targets [M, C], or 'accuracy' with int labels [M], over the seen clips."""
        if name == "map":
            return mean_average_precision(self.scores, targets, self.seen)["map"]
        if name == "accuracy":
            return top1_accuracy(self.scores, targets, self.seen)
        raise ValueError(f"unknown metric {name!r}; choose one of {METRICS}")
