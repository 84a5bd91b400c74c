"""`finetune(config, workdir)`: AudioMAE's fine-tuning recipe (the paper's Table 4) on the shared trainer.

    python -m uamix_jax.main --config=configs/finetune.py:esc50 --workdir=W --config.init_from=ENC \
        --config.data.root=DIR

Top to bottom: the dataset's manifest → its train/test partitions (`evaluation.protocol`: published splits, the
folds of `config.folds`, or a seeded stratified 80/20 split) → per partition, in its own workdir (W, or W/fold_<k>):
a fresh encoder (pooling 'fc_norm', drop path) + linear head, AdamW with layer-wise lr decay
(`optim.finetune_rules`) and warmup + half-cycle cosine to min_lr, `init_from` = anything `load_encoder` reads
(its `norm` is dropped; `fc_norm` and the head start fresh unless the source has an `fc_norm`), trained by
`loop.run_training` (resume, checkpoints, bad audio, metrics) with an evaluation of the test (and valid) split every
`eval.every_epochs` epochs → `W/finetune/<dataset>.json` and a summary row in W's metrics.jsonl / TensorBoard.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from uamix_jax.audio.fbank import SAMPLE_RATE
from uamix_jax.data.bad_audio import BadAudioLog, check_manifest
from uamix_jax.data.layouts import dataset_label, read_configured_dataset
from uamix_jax.data.manifest import Manifest
from uamix_jax.data.pipeline import bad_audio_log_path, has_multi_label_clips, make_pipeline
from uamix_jax.evaluation.embed import InputPolicy, clip_embeddings
from uamix_jax.evaluation.encoders import load_encoder
from uamix_jax.evaluation.metrics import ScoreTable
from uamix_jax.evaluation.protocol import (
    EvalRun, evaluation_runs, metric_name, run_record, summary_record, summary_scalars, write_record)
from uamix_jax.interop.workdir import assign_tree
from uamix_jax.models.vit import AudioMAEEncoder
from uamix_jax.sharding import batch_sharding, data_mesh, host_copy, replicated
from uamix_jax.train import optim
from uamix_jax.train.finetune_step import FinetuneOptions, classifier_head, make_finetune_step
from uamix_jax.train.loop import TrainingPlan, TrainTask, plan_training, run_training
from uamix_jax.train.metrics import MetricWriter, read_metrics
from uamix_jax.train.state import StateInit, TrainState, create_state


# ------------------------------------------------------------------------------------------------ model and state
def finetune_groups(config: ml_collections.ConfigDict, depth: int) -> optim.Groups:
    """AudioMAE's groups (`optim.finetune_rules`): layer-wise lr decay; weight decay on matrices except the cls
    token."""
    o = config.optim
    rules, scales = optim.finetune_rules(depth, o.layer_decay)
    return optim.Groups(tuple(rules), {
        label: optim.Group(scale, 0.0 if label in optim.NO_WEIGHT_DECAY else o.weight_decay)
        for label, scale in scales.items()})


def finetune_init(encoder: AudioMAEEncoder, head: nn.Module) -> StateInit:
    """key → {'params': {'encoder', 'head'}}: a fresh encoder (with fc_norm) and AudioMAE's fresh linear head."""

    def init(key: jax.Array) -> dict[str, Any]:
        k_enc, k_head = jax.random.split(key)
        x = jnp.zeros((1, encoder.target_length, encoder.num_mel_bins), jnp.float32)
        return {"params": {"encoder": encoder.init(k_enc, x)["params"],
                           "head": head.init(k_head, jnp.zeros((1, encoder.width), jnp.float32))["params"]}}

    return init


def load_pretrained(state: TrainState, path: str, encoder: AudioMAEEncoder) -> TrainState:
    """The encoder of `path` (converted AudioMAE, .pth or any training workdir) in a fresh state.

    Its final `norm` is dropped (AudioMAE's strict=False load); its `fc_norm`, if it has one (a fine-tuned model),
    is kept, else fc_norm starts fresh; the head always starts fresh. Every other path and shape must match.
    """
    _, variables = load_encoder(path, target_length=encoder.target_length, posemb=encoder.posemb)
    loaded = {k: v for k, v in variables["params"].items() if k != "norm"}
    fresh = dict(state.params["encoder"])
    template = {k: v for k, v in fresh.items() if k != "fc_norm" or "fc_norm" in loaded}
    encoder_params = dict(assign_tree(template, loaded, "encoder", path, hint=(
        "Fine-tune with the model size it was trained with (config.model.size).")))
    encoder_params.setdefault("fc_norm", fresh["fc_norm"])
    logging.info("init_from %s: encoder%s; the head starts fresh", path,
                 " with its fc_norm" if "fc_norm" in loaded else " (fc_norm starts fresh)")
    return state.replace(params={**state.params, "encoder": encoder_params})


def options_from_config(config: ml_collections.ConfigDict, num_classes: int, multi_hot: bool) -> FinetuneOptions:
    """The step's static options, read once from the config."""
    a, f = config.augment, config.finetune
    return FinetuneOptions(
        num_classes=num_classes, target_length=config.model.target_length, stats=config.data.stats,
        multilabel=f.multilabel, label_smoothing=f.label_smoothing, mixup_prob=f.mixup_prob,
        mixup_alpha=f.mixup_alpha, mix_group=f.mix_group,
        gain=(a.gain_min, a.gain_max) if a.gain_max > 0 else None, gain_beta=a.get("gain_beta", 0.0),
        freq_mask=a.freq_mask, time_mask=a.time_mask, mask_t_prob=a.mask_t_prob, mask_f_prob=a.mask_f_prob,
        multi_hot=multi_hot)


def make_logits_fn(encoder: AudioMAEEncoder, head: nn.Module, policy: InputPolicy
                   ) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """jit(fn(params, waveform [B, N], length [B]) → logits [B, C]) for evaluation (no augmentation, no masking).

    policy.crop='centre': one T-frame input per clip. 'windows' (VoxCeleb): the mean of the logits over consecutive
    T-frame windows, computed as the head of the mean window embedding (`embed.clip_embeddings`; the same number,
    as the head is linear). Batches sharded over devices on their leading axis are split by XLA (GSPMD).
    """
    def logits(params: Any, waveform: jax.Array, length: jax.Array) -> jax.Array:
        emb = clip_embeddings(encoder, {"params": params["encoder"]}, waveform, length, policy)
        return head.apply({"params": params["head"]}, emb)

    return jax.jit(logits)


# ---------------------------------------------------------------------------------------------------- evaluation
class SplitEvaluator:
    """The metric on every clip of the evaluation splits, from padded batches (each clip counted once).

    Runs on this process's devices (batches split over them); every process computes the same numbers.
    """

    def __init__(self, config: ml_collections.ConfigDict, encoder: AudioMAEEncoder, head: Any,
                 splits: dict[str, Manifest], metric: str, steps_per_epoch: int, workdir: str):
        e = config.eval
        self.policy = InputPolicy(target_length=encoder.target_length, stats=config.data.stats, crop=config.data.crop,
                                  clip_seconds=e.clip_seconds)
        self.logits = make_logits_fn(encoder, head, self.policy)
        self.splits, self.metric, self.steps_per_epoch = splits, metric, steps_per_epoch
        mesh = data_mesh(jax.local_devices())
        self.data, self.replicated = batch_sharding(mesh), replicated(mesh)
        self.batch = -(-e.batch_size // mesh.devices.size) * mesh.devices.size
        self.worker_count, self.progress = config.data.worker_count, config.progress
        self.bad_log = BadAudioLog(bad_audio_log_path(os.path.join(workdir, "bad_audio_eval.txt"),
                                                      jax.process_index(), jax.process_count()))

    def targets(self, manifest: Manifest) -> np.ndarray:
        return manifest.multi_labels.dense() if self.metric == "map" else manifest.labels

    def scores(self, params: Any, manifest: Manifest) -> ScoreTable:
        """Logits of every clip of `manifest`."""
        table = ScoreTable(len(manifest), manifest.num_classes)
        pipeline = make_pipeline(manifest, batch_size=self.batch, clip_samples=self.policy.clip_samples, seed=0,
                                 train=False, num_epochs=1, drop_remainder=False, worker_count=self.worker_count,
                                 bad_audio_log=self.bad_log, sample_rate=SAMPLE_RATE, multi_hot=False)
        with pipeline:
            for batch in pipeline:
                wave = jax.device_put(batch["waveform"], self.data)
                length = jax.device_put(batch["length"], self.data)
                table.add(batch["index"], np.asarray(self.logits(params, wave, length)), batch["mask"])
        if not table.seen.all():
            logging.warning("%d of %d clips of %s could not be read and are left out of the evaluation",
                            int((~table.seen).sum()), len(manifest), manifest.name)
        return table

    def __call__(self, state: TrainState, step: int) -> dict[str, float]:
        params = jax.device_put(host_copy(state.params), self.replicated)
        out: dict[str, float] = {"eval_epoch": round(step / self.steps_per_epoch, 3)}
        for name, manifest in self.splits.items():
            out[f"{name}/{self.metric}"] = self.scores(params, manifest).metric(self.metric, self.targets(manifest))
        logging.info("step %d evaluation: %s", step, out)
        return out


def evaluations(workdir: str, metric: str) -> list[dict[str, float]]:
    """The evaluation rows of a run's metrics.jsonl, in order, as {'epoch', 'test/<metric>'[, 'valid/<metric>']}."""
    path = os.path.join(workdir, "metrics.jsonl")
    rows = read_metrics(path) if os.path.isfile(path) else []
    out = []
    for row in rows:
        if f"test/{metric}" in row:
            epoch = row["eval_epoch"]
            entry = {"epoch": int(epoch) if float(epoch).is_integer() else epoch,
                     f"test/{metric}": row[f"test/{metric}"]}
            if f"valid/{metric}" in row:
                entry[f"valid/{metric}"] = row[f"valid/{metric}"]
            out.append(entry)
    return out


# --------------------------------------------------------------------------------------------------------- runs
def finetune_task(config: ml_collections.ConfigDict, plan: TrainingPlan, num_classes: int, *, multi_hot: bool,
                  abstract: bool = False, evaluate: Any = None, eval_every: int = 0) -> TrainTask:
    """The fine-tuning task for the shared loop: encoder (fc_norm, drop path) + linear head over `num_classes`;
    multi_hot: targets from the batches' multi-hot labels (multi-label sets). abstract=True: shapes only."""
    if config.finetune.mixup_prob > 0:
        group = config.finetune.mix_group or plan.per_device_batch
        if group < 2 or plan.per_device_batch % group:
            raise ValueError(f"config.finetune.mix_group={config.finetune.mix_group} must be ≥ 2 and divide the "
                             f"per-device batch {plan.per_device_batch} (or be 0 for the per-device batch)")
    encoder, head = AudioMAEEncoder.from_config(config.model, dtype=config.dtype), classifier_head(num_classes)
    state, _ = create_state(config, finetune_init(encoder, head), finetune_groups(config, encoder.depth),
                            plan.total_steps, jax.random.key(config.seed), abstract=abstract)
    options = options_from_config(config, num_classes, multi_hot)
    init_from = None
    if config.init_from and not abstract:
        init_from = lambda fresh: load_pretrained(fresh, config.init_from, encoder)  # noqa: E731
    return TrainTask(state=state, step=make_finetune_step(encoder, head, options), batch_keys=options.batch_keys,
                     init_from=init_from, evaluate=evaluate, eval_every=eval_every)


def finetune_run(config: ml_collections.ConfigDict, workdir: str, run: EvalRun, num_classes: int) -> dict[str, Any]:
    """Trains and evaluates one partition in `workdir` (resuming); returns its record (value, best, best_epoch)."""
    metric = metric_name(config.finetune.multilabel)
    multi_hot = bool(config.finetune.multilabel and has_multi_label_clips(run.train))
    if has_multi_label_clips(run.train) and not config.finetune.multilabel:
        logging.warning("%s has clips with several labels but config.finetune.multilabel is False: training on "
                        "each clip's first label with cross-entropy", run.train.name)
    plan = plan_training(config, len(run.train))
    every = config.eval.every_steps or max(1, int(round(config.eval.every_epochs * plan.steps_per_epoch)))
    splits = {"test": run.test, **({"valid": run.valid} if run.valid is not None else {})}
    encoder = AudioMAEEncoder.from_config(config.model, dtype=config.dtype)
    evaluator = SplitEvaluator(config, encoder, classifier_head(num_classes), splits, metric, plan.steps_per_epoch,
                               workdir)
    task = finetune_task(config, plan, num_classes, multi_hot=multi_hot, evaluate=evaluator, eval_every=every)
    run_training(config, workdir, run.train, plan, task)
    return {**run_record(evaluations(workdir, metric), metric), "train_clips": len(run.train),
            "test_clips": len(run.test)}


def _write_summary(workdir: str, records: dict[str, dict[str, Any]], record: dict[str, Any]) -> None:
    """Summary scalars in W's metrics.jsonl / TensorBoard. Folds: one row per fold (step k) and the means at the
    last fold's step, in a file that holds only these rows. One run: a row after its last one, written once (a
    finished run started again adds nothing)."""
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "metrics.jsonl")
    folds = [name for name in records if name]
    if folds:
        rows = [(int(name.split("_")[1]), summary_scalars({"metric": record["metric"], **records[name]}))
                for name in folds]
        rows.append((rows[-1][0], summary_scalars(record)))
    else:
        existing = read_metrics(path)
        summary = summary_scalars(record)
        if all(existing[-1].get(k) == v for k, v in summary.items()):
            return
        rows = [(int(existing[-1]["step"]), summary)]
    writer = MetricWriter(workdir, resume_step=0 if folds else None)
    for step, row in rows:
        writer.write(step, row)
    writer.close()


def finetune(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Fine-tunes config.init_from on config.data (all partitions) in `workdir`; returns the result record."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    manifest = read_configured_dataset(config.data, labelled=True, workdir=workdir, seed=config.seed)
    check_manifest(manifest)
    d = config.data
    runs = evaluation_runs(manifest, folds=config.folds, train_split=d.train_split, valid_split=d.valid_split,
                           test_split=d.test_split, seed=config.seed)
    metric = metric_name(config.finetune.multilabel)
    records = {}
    for run in runs:
        run_dir = os.path.join(workdir, run.name) if run.name else workdir
        logging.info("fine-tuning %s: %d training clips, %d test clips%s", run.name or manifest.name,
                     len(run.train), len(run.test), f", {len(run.valid)} valid clips" if run.valid else "")
        records[run.name] = finetune_run(config, run_dir, run, manifest.num_classes)
    dataset = dataset_label(config.data)
    record = summary_record(dataset, metric, os.path.abspath(config.init_from) if config.init_from else
                            f"random:{config.model.size}:seed{config.seed}", records)
    if jax.process_index() == 0:
        path = write_record(os.path.join(workdir, "finetune", f"{dataset}.json"), record)
        logging.info("wrote %s", path)
    _write_summary(workdir, records, record)
    folds = [name for name in records if name]
    print(f"finetune {dataset}: {metric} {record['value']:.4f} (last), best {record['best']:.4f}"
          + (f", std {record['std']:.4f} over {len(folds)} folds" if folds else f" at epoch {record['best_epoch']}"),
          flush=True)
    return record
