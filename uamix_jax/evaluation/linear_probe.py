"""Linear probing of a frozen encoder (the cheap variant of the paper's Table 4): `run_linear_probe(config, workdir)`.

    python -m uamix_jax.main --config=configs/linear_probe.py:esc50 --workdir=W --config.init_from=ENC \
        --config.data.root=DIR

manifest → train/test partitions (`evaluation.protocol`, as fine-tuning; the same for every encoder) → the clip
embeddings of every labelled clip from the encoder config.init_from names (`sources`: our encoder, a HEAR module or
precomputed embeddings, `[NAME=]SOURCE`), cached in W/embeddings as by the few-shot command → per partition, MAE's
linear probe on the embeddings:

    logits = W · BN(e) + b,   BN = BatchNorm without affine (batch statistics in training, running ones at test)

trained with AdamW (optax; config.optim: b1, b2, eps, weight decay) on minibatches, the config's warmup + cosine lr
(`uamix_jax.schedules`), cross-entropy (single-label) or BCE (multi-label); the test metric (top-1 or mAP) after
every epoch → W/linear_probe/<dataset>.json in fine-tuning's format (value = last epoch, best, best_epoch; folds:
per_fold, std). Seconds to minutes: only the probe trains, on arrays already in memory.

Why not on the shared trainer (`uamix_jax.train.loop`): that loop streams audio through a grain pipeline and runs the
encoder in every step, with checkpoints and resume for hours-long runs. A probe never runs the encoder after the
embeddings are cached, trains a few thousand steps of a linear layer in seconds, and must also probe embeddings the
project did not compute (any encoder's cached or precomputed embeddings), so it trains on arrays in memory; the
evaluation layer also never imports the trainer.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from tqdm import tqdm

from uamix_jax.data.bad_audio import check_manifest
from uamix_jax.data.layouts import dataset_label, read_configured_dataset
from uamix_jax.data.manifest import Manifest
from uamix_jax.evaluation.metrics import mean_average_precision, top1_accuracy
from uamix_jax.evaluation.protocol import EvalRun, evaluation_runs, metric_name, run_record, summary_record, write_record
from uamix_jax.evaluation.sources import make_embedder, parse_spec
from uamix_jax.schedules import lr_schedule


class LinearProbe(nn.Module):
    """MAE's probe head: BatchNorm1d(affine=False, eps=1e-6) then Linear(D → C) (weights N(0, 0.01²), bias 0).

    embeddings [B, D] → logits [B, C], float32. torch's BN momentum 0.1 is flax's 0.9.
    """

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.BatchNorm(use_running_average=not train, use_scale=False, use_bias=False, epsilon=1e-6, momentum=0.9,
                         name="bn")(x.astype(jnp.float32))
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="head")(x)


def _loss(logits: jax.Array, targets: jax.Array, multilabel: bool) -> jax.Array:
    if multilabel:
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets))
    return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def train_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *,
                num_classes: int, multilabel: bool, epochs: int, batch_size: int, optim: Mapping[str, Any],
                seed: int, progress: bool = False) -> list[dict[str, float]]:
    """Trains a LinearProbe on embeddings x_train [N, D] with targets y_train (int [N], or multi-hot [N, C] when
    multilabel; C = num_classes); returns one row per epoch {'epoch', 'test/<metric>'} measured on (x_test, y_test).

    Minibatches of `batch_size` (the last partial batch of an epoch is dropped, as a DataLoader with drop_last;
    at least one batch), reshuffled per epoch from `seed`. The learning rate is `optim`'s schedule
    (`uamix_jax.schedules.lr_schedule` with the batch actually used; the presets: base_lr · batch / 256, warmup then
    cosine to 0). MAE probes with LARS at batch 16,384, whose trust ratio (0.001·|w|/|g|) moves the weights by
    ~lr·0.1 % per step: with these sets' few hundred steps that barely leaves the initialisation, so AdamW it is.
    """
    n = x_train.shape[0]
    batch = min(batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total = epochs * steps_per_epoch
    tx = optax.adamw(lr_schedule(optim, batch, total), b1=optim["b1"], b2=optim["b2"], eps=optim["eps"],
                     weight_decay=optim["weight_decay"])
    model = LinearProbe(num_classes)
    variables = model.init(jax.random.key(seed), jnp.zeros((2, x_train.shape[1]), jnp.float32))
    params, stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)

    def targets_of(y: jax.Array) -> jax.Array:
        return y.astype(jnp.float32) if multilabel else jax.nn.one_hot(y, num_classes)

    @jax.jit
    def step(params, stats, opt_state, x, y):
        def loss_fn(p):
            logits, updates = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return _loss(logits, targets_of(y), multilabel), updates["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    predict = jax.jit(lambda p, s, x: model.apply({"params": p, "batch_stats": s}, x))
    metric = metric_name(multilabel)
    rng = np.random.default_rng(seed)
    x_train_d, y_train_d, x_test_d = jnp.asarray(x_train), jnp.asarray(y_train), jnp.asarray(x_test)
    history = []
    for epoch in tqdm(range(1, epochs + 1), desc="linear probe", unit="epoch", disable=not progress):
        order = jnp.asarray(rng.permutation(n)[: steps_per_epoch * batch].reshape(steps_per_epoch, batch))
        for rows in order:
            params, stats, opt_state, loss = step(params, stats, opt_state, x_train_d[rows], y_train_d[rows])
        scores = np.asarray(predict(params, stats, x_test_d))
        value = (mean_average_precision(scores, y_test)["map"] if multilabel else top1_accuracy(scores, y_test))
        history.append({"epoch": epoch, f"test/{metric}": value, "loss": float(loss)})
    return history


def _rows(run_part: Manifest, position: dict[str, int]) -> np.ndarray:
    return np.array([position[c] for c in run_part.clip_ids], np.int64)


def probe_run(config: ml_collections.ConfigDict, run: EvalRun, manifest: Manifest, emb: np.ndarray,
              valid: np.ndarray) -> dict[str, Any]:
    """Trains and tests the probe on one partition (clips that failed to embed left out); returns its record."""
    multilabel = config.probe.multilabel
    position = {c: i for i, c in enumerate(manifest.clip_ids)}
    train, test = _rows(run.train, position), _rows(run.test, position)
    train, test = train[valid[train]], test[valid[test]]
    if multilabel:
        targets = manifest.multi_labels.dense()
        y_train, y_test = targets[train], targets[test]
    else:
        y_train, y_test = manifest.labels[train], manifest.labels[test]
    history = train_probe(emb[train], y_train, emb[test], y_test, num_classes=manifest.num_classes,
                          multilabel=multilabel, epochs=config.train.epochs, batch_size=config.train.global_batch,
                          optim=config.optim, seed=config.seed, progress=config.progress)
    metric = metric_name(multilabel)
    return {**run_record(history, metric), "train_clips": int(train.size), "test_clips": int(test.size)}


def run_linear_probe(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Linear probe of config.init_from on config.data in `workdir`; returns the result record (module docstring).

    Runs on process 0 only (embeddings of an evaluation set fit one host); other processes return an empty dict.
    """
    if jax.process_index() != 0:
        return {}
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    d = config.data
    manifest = read_configured_dataset(d, labelled=True, workdir=workdir, seed=config.seed)
    check_manifest(manifest)
    runs = evaluation_runs(manifest, folds=config.folds, train_split=d.train_split, valid_split="",
                           test_split=d.test_split, seed=config.seed)
    spec = parse_spec(config.init_from, random_label=f"random init ({config.model.size})")
    embedder = make_embedder(spec, config, cache_dir=os.path.join(workdir, "embeddings"),
                             report=lambda message: logging.info("%s", message))
    emb, valid = embedder.embed(manifest)
    records = {run.name: probe_run(config, run, manifest, emb, valid) for run in runs}
    dataset = dataset_label(d)
    record = summary_record(dataset, metric_name(config.probe.multilabel), embedder.description, records)
    record.update(label=embedder.label, **embedder.info)  # info: the embeddings' file and how they were made
    path = write_record(os.path.join(workdir, "linear_probe", f"{dataset}.json"), record)
    print(f"linear probe {dataset}: {record['metric']} {record['value']:.4f} (last epoch), best {record['best']:.4f}"
          + (f", std {record['std']:.4f} over {len(records)} folds" if "std" in record else "")
          + f"; {path}", flush=True)
    return record
