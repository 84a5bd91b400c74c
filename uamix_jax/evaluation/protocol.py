"""The evaluation protocol of the paper's Table 4, shared by fine-tuning and linear probing: which clips train and which
are tested (published splits, cross-validation folds, or a seeded stratified split), and the result record.

Runs (`evaluation_runs`):
- folds given ('all' or e.g. '1,3'): one run per fold k: test = fold k, train = the other folds (ESC-50's 5-fold
  cross-validation; folds must be > 0 on every clip);
- else, when the dataset has `test_split`: train = `train_split` ('' = every clip outside test and valid), test =
  `test_split`, valid = `valid_split` ('' = none; with one, `best` is chosen on valid and reported on test);
- else (no published split, e.g. the folder layout): a seeded stratified 80/20 train/test split
  (scikit-learn's `train_test_split`).

Result record (`W/<task>/<dataset>.json`): dataset, metric ('map' or 'accuracy'), value (the last evaluation's test
metric), best (the test metric at the best evaluation: highest test metric, or highest valid metric when a valid
split exists), best_epoch, encoder; with folds also per_fold (each fold's record) and std (of the per-fold values);
then value and best are the means over the folds.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from uamix_jax.data.manifest import Manifest

TEST_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class EvalRun:
    """One train/test partition: `name` is '' for a single run, 'fold_<k>' for cross-validation."""

    name: str
    train: Manifest
    test: Manifest
    valid: Manifest | None = None


def parse_folds(folds: str, available: Sequence[int]) -> list[int]:
    """'all' → every fold present; '1,3' → [1, 3] (each must be present); '' → []."""
    folds = folds.strip()
    if not folds:
        return []
    present = sorted({int(f) for f in available if f > 0})
    if folds == "all":
        if not present:
            raise ValueError("config.folds='all' but the dataset has no folds (only ESC-50 and manifests with a fold "
                             "column do); use config.folds=''")
        return present
    try:
        wanted = [int(f) for f in folds.split(",") if f.strip()]
    except ValueError:
        raise ValueError(f"config.folds={folds!r} must be 'all', '' or comma-separated fold numbers") from None
    missing = [f for f in wanted if f not in present]
    if missing:
        raise ValueError(f"config.folds={folds!r}: folds {missing} are not in the dataset (it has {present})")
    return wanted


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows), sorted, with every class in the same proportion in both (as far as counts allow).

    Classes with a single clip cannot be stratified; they go to train.
    """
    labels = np.asarray(labels)
    rows = np.arange(labels.shape[0])
    _, counts = np.unique(labels, return_counts=True)
    single = np.isin(labels, np.unique(labels)[counts < 2])
    train, test = train_test_split(rows[~single], test_size=test_fraction, random_state=seed,
                                   stratify=labels[~single])
    return np.sort(np.concatenate([train, rows[single]])), np.sort(test)


def evaluation_runs(manifest: Manifest, *, folds: str = "", train_split: str = "", valid_split: str = "",
                    test_split: str = "test", seed: int = 0, test_fraction: float = TEST_FRACTION) -> list[EvalRun]:
    """The train/test partitions of `manifest` (see the module docstring); labelled clips only."""
    manifest = manifest.select(manifest.labels >= 0)
    if len(manifest) == 0:
        raise ValueError(f"{manifest.name}: no labelled clips; fine-tuning and linear probing need class labels")
    fold_list = parse_folds(folds, manifest.folds)
    if fold_list:
        known = manifest.folds > 0
        return [EvalRun(f"fold_{k}", manifest.select(known & (manifest.folds != k)),
                        manifest.select(manifest.folds == k)) for k in fold_list]
    splits = set(manifest.splits.unique())
    if test_split and test_split in splits:
        for name, split in (("train_split", train_split), ("valid_split", valid_split)):
            if split and split not in splits:
                raise ValueError(f"config.data.{name}={split!r} is not a split of {manifest.name}; it has "
                                 f"{sorted(splits)}")
        held_out = [s for s in (test_split, valid_split) if s]
        train = (manifest.filter(split=train_split) if train_split
                 else manifest.select(~manifest.splits.isin(held_out)))
        valid = manifest.filter(split=valid_split) if valid_split else None
        return [EvalRun("", train, manifest.filter(split=test_split), valid)]
    train_rows, test_rows = stratified_split(manifest.labels, test_fraction, seed)
    return [EvalRun("", manifest.select(train_rows), manifest.select(test_rows))]


def metric_name(multilabel: bool) -> str:
    return "map" if multilabel else "accuracy"


def run_record(evaluations: Sequence[dict[str, float]], metric: str) -> dict[str, Any]:
    """{value, best, best_epoch, evaluations} from a run's evaluation rows, each {'epoch', 'test/<metric>' and
    optionally 'valid/<metric>'}, in order. `best` is chosen on valid when the rows have it."""
    if not evaluations:
        raise ValueError("run_record: the run has no evaluation (did training run at all?)")
    test = [float(r[f"test/{metric}"]) for r in evaluations]
    chooser = [float(r.get(f"valid/{metric}", r[f"test/{metric}"])) for r in evaluations]
    best = int(np.argmax(chooser))  # the first of equal values: the earliest epoch
    return {"value": test[-1], "best": test[best], "best_epoch": evaluations[best]["epoch"],
            "selected_on": "valid" if f"valid/{metric}" in evaluations[best] else "test",
            "evaluations": len(evaluations)}


def summary_record(dataset: str, metric: str, encoder: str, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The result record: one run as is; cross-validation folds as means with per_fold and std."""
    head = {"dataset": dataset, "metric": metric}
    if list(runs) == [""]:
        return {**head, **runs[""], "encoder": encoder}
    values = np.array([r["value"] for r in runs.values()])
    return {**head, "value": float(values.mean()), "best": float(np.mean([r["best"] for r in runs.values()])),
            "best_epoch": [r["best_epoch"] for r in runs.values()], "std": float(values.std()),
            "per_fold": runs, "encoder": encoder}


def write_record(path: str, record: dict[str, Any]) -> str:
    """Writes the JSON record atomically; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def summary_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers as metrics-row scalars: '<metric>/value', '/best', '/best_epoch' (single runs), '/std'."""
    m = record["metric"]
    out = {f"{m}/value": record["value"], f"{m}/best": record["best"]}
    if "std" in record:
        out[f"{m}/std"] = record["std"]
    else:
        out[f"{m}/best_epoch"] = record["best_epoch"]
    return out

