"""The shared trainer, readable top to bottom, and uaMix-MAE's contrastive tuning (`train_and_evaluate`) on it.

`run_training(config, workdir, plan, task)` runs any training task (tuning stage 1/2, MAE pretraining,
fine-tuning): mesh → data pipeline → resume cascade (workdir checkpoint > task.init_from > fresh) → jitted, donated,
sharded step under config.precision → loop with log (means over `log_every` steps) / evaluation / checkpoint cadence
→ final checkpoint. The pipeline is closed on every exit path. Runs the same on one CPU, 8 TPU cores or several
hosts (after `jax.distributed.initialize()`): every process feeds its own rows of the global batch.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from uamix_jax.audio.fbank import SAMPLE_RATE
from uamix_jax.data.bad_audio import BadAudioLog, check_manifest
from uamix_jax.data.layouts import read_configured_dataset
from uamix_jax.data.manifest import Manifest
from uamix_jax.data.pipeline import bad_audio_log_path, make_pipeline
from uamix_jax.data.summary import dataset_summary
from uamix_jax.models.precision import check_precision
from uamix_jax.train import build, optim
from uamix_jax.train.checkpoint import Checkpointer
from uamix_jax.train.metrics import MetricWriter
from uamix_jax.train.step import data_mesh, global_batch, make_train_step, replicate, shard_train_step
from uamix_jax.train.state import TrainState

Step = Callable[[TrainState, dict[str, jax.Array], jax.Array], tuple[TrainState, dict[str, jax.Array]]]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the step and the last good checkpoint."""


@dataclasses.dataclass
class TrainTask:
    """What one training task hands the shared loop.

    `step` is per-device code (axis 'data') returning scalar metrics, `loss` among them; the loop runs it as
    jit(shard_map) with the state donated. `init_from` fills a fresh state (only when the workdir has no checkpoint).
    `evaluate(state, step)` runs on the host every `eval_every` steps and at the end; its values are logged too.
    """

    name: str
    state: TrainState
    step: Step
    schedule: Callable[[Any], Any]
    init_from: Callable[[TrainState], TrainState] | None = None
    batch_keys: tuple[str, ...] = ("waveform", "length", "index", "label")
    postfix: tuple[str, ...] = ("loss",)
    evaluate: Callable[[TrainState, int], dict[str, float]] | None = None
    eval_every: int = 0
    warmup_steps: int | None = None  # for config.json; None: round(config.optim.warmup_fraction × total steps)
    derived: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """What the data and the device count decide: steps and batch sizes."""

    manifest: Manifest
    steps_per_epoch: int
    total_steps: int
    per_device_batch: int


def load_manifest(data: ml_collections.ConfigDict) -> Manifest:
    """The manifest of config.data (one split of it when data.split is set)."""
    return read_configured_dataset(data)


def plan_training(config: ml_collections.ConfigDict, manifest: Manifest) -> TrainingPlan:
    """Steps per epoch and in all (train.total_steps, else epochs × clips // global batch); batch checks."""
    t = config.train
    n_dev, n_proc = jax.device_count(), jax.process_count()
    if t.global_batch % n_dev or t.global_batch % n_proc:
        raise ValueError(f"config.train.global_batch={t.global_batch} must be divisible by the {n_dev} devices and "
                         f"{n_proc} processes")
    steps_per_epoch = len(manifest) // t.global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{len(manifest)} clips make no global batch of {t.global_batch}; lower train.global_batch")
    total_steps = t.total_steps or t.epochs * steps_per_epoch
    return TrainingPlan(manifest, steps_per_epoch, total_steps, t.global_batch // n_dev)


def write_config(config: ml_collections.ConfigDict, workdir: str, **derived: Any) -> None:
    """`<workdir>/config.json`: the config as run, plus the values derived at run time."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    record = {**config.to_dict(), "derived": derived}
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True, default=str)


def _mean_metrics(history: list[tuple[int, dict[str, jax.Array]]]) -> dict[str, float]:
    """The mean of each metric over the logged window (NaN entries, e.g. an unknown label accuracy, skipped)."""
    stacked = jax.device_get({k: jnp.stack([m[k] for _, m in history]) for k in history[0][1]})
    out = {}
    for k, v in stacked.items():
        v = np.asarray(v, np.float64)
        finite = v[~np.isnan(v)]
        out[k] = float(finite.mean()) if finite.size else float("nan")
    return out


def _check_finite(history: list[tuple[int, dict[str, jax.Array]]], checkpointer: Checkpointer) -> None:
    """Raises NonFiniteLossError at the first non-finite loss in `history`."""
    if not history:
        return
    losses = np.asarray(jax.device_get(jnp.stack([m["loss"] for _, m in history])))
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        step = history[int(bad[0])][0]
        checkpointer.wait()
        good = checkpointer.latest_step()
        raise NonFiniteLossError(
            f"loss is {losses[bad[0]]} at step {step}; training stopped. The last good checkpoint is step {good} in "
            f"{checkpointer.directory} (kept intact). Lower config.optim.lr, check the data for silent or broken "
            f"clips, or use config.dtype='float32'.")


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _check_params(state: TrainState, step: int, checkpointer: Checkpointer) -> None:
    """A checkpoint is only written from finite parameters (the loss of step s has not seen step s's update)."""
    if not bool(_all_finite(state.params)):
        checkpointer.wait()
        raise NonFiniteLossError(
            f"parameters are not finite after step {step}; training stopped without saving them. The last good "
            f"checkpoint is step {checkpointer.latest_step()} in {checkpointer.directory} (kept intact). Lower "
            f"config.optim.lr or check the data.")


def run_training(config: ml_collections.ConfigDict, workdir: str, plan: TrainingPlan, task: TrainTask) -> TrainState:
    """Trains `task` in `workdir` for plan.total_steps, resuming from the workdir's latest checkpoint if any."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    mesh = data_mesh()
    n_proc, t = jax.process_count(), config.train
    precision = check_precision(config.get("precision", "default"))

    # ---- data
    bad_log = BadAudioLog(bad_audio_log_path(os.path.join(workdir, "bad_audio.txt"), jax.process_index(), n_proc))
    pipeline = make_pipeline(
        plan.manifest, batch_size=t.global_batch // n_proc,
        clip_samples=int(round(config.data.clip_seconds * SAMPLE_RATE)), seed=config.seed, train=True,
        process_index=jax.process_index(), process_count=n_proc, worker_count=config.data.worker_count,
        on_bad_audio=config.data.on_bad_audio, bad_audio_log=bad_log, sample_rate=SAMPLE_RATE,
        multi_hot="multi_hot" in task.batch_keys)
    try:
        if jax.process_index() == 0:
            logging.info("%s", dataset_summary(plan.manifest, bad_count=bad_log.count))

        # ---- resume cascade: workdir > init_from > fresh
        state = task.state
        checkpointer = Checkpointer(workdir, keep=t.keep_checkpoints)
        resumed = checkpointer.latest_step()
        if resumed is not None:
            state = checkpointer.restore(state, resumed, data_iterator=pipeline)
            logging.info("resumed from %s at step %d", checkpointer.directory, resumed)
        elif task.init_from is not None:
            state = task.init_from(state)
        write_config(config, workdir, total_steps=plan.total_steps, steps_per_epoch=plan.steps_per_epoch,
                     devices=jax.device_count(), processes=n_proc, per_device_batch=plan.per_device_batch,
                     warmup_steps=(task.warmup_steps if task.warmup_steps is not None
                                   else int(round(config.optim.warmup_fraction * plan.total_steps))),
                     clips=len(plan.manifest), **task.derived)
        writer = MetricWriter(workdir, resume_step=int(state.step))
        state = replicate(state, mesh)
        with jax.default_matmul_precision(precision):
            state = _loop(config, plan, task, state, mesh, pipeline, checkpointer, writer)
        checkpointer.close()
        writer.close()
    finally:
        pipeline.close()
    if bad_log.count:
        logging.warning("%d bad audio files were skipped; see %s", bad_log.count, bad_log.path)
    return state


def _loop(config, plan: TrainingPlan, task: TrainTask, state: TrainState, mesh, pipeline, checkpointer: Checkpointer,
          writer: MetricWriter) -> TrainState:
    t, total = config.train, plan.total_steps
    train_step = shard_train_step(task.step, mesh)
    key = jax.random.key(config.seed + 1)
    start = int(state.step)
    history: list[tuple[int, dict[str, jax.Array]]] = []
    bar = tqdm(total=total, initial=start, desc=task.name, unit="step",
               disable=not t.progress or jax.process_index() != 0, dynamic_ncols=True)
    tick, tick_step = time.perf_counter(), start
    for step in range(start + 1, total + 1):
        batch = next(pipeline)
        state, metrics = train_step(state, global_batch({k: batch[k] for k in task.batch_keys}, mesh), key)
        history.append((step, metrics))
        is_last = step == total
        row: dict[str, float] = {}
        if step % t.log_every == 0 or is_last:
            _check_finite(history, checkpointer)
            row = _mean_metrics(history)
            history.clear()
            row.update(lr=float(task.schedule(step - 1)), epoch=(step - 1) // plan.steps_per_epoch)
            now = time.perf_counter()
            bar.set_postfix({**{k: f"{row[k]:.4g}" for k in task.postfix if k in row},
                             "steps/s": f"{(step - tick_step) / max(now - tick, 1e-9):.3g}"})
            tick, tick_step = now, step
        if task.evaluate is not None and ((task.eval_every and step % task.eval_every == 0) or is_last):
            row.update(task.evaluate(state, step))
        if row:
            writer.write(step, row)
        if step % t.checkpoint_every == 0 or is_last:
            _check_finite(history, checkpointer)
            _check_params(state, step, checkpointer)
            checkpointer.save(step, state, pipeline, force=is_last)
        bar.update(1)
    bar.close()
    return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """uaMix-MAE contrastive tuning, config.stage 1 or 2 (SPEC.md), in `workdir` (resumes when it has checkpoints).

    With config.fewshot.every > 0 and a labelled config.fewshot.data, N-way K-shot accuracy of the encoder is
    evaluated every that many steps and at the end, and logged beside the loss.
    """
    manifest = load_manifest(config.data)
    check_manifest(manifest)
    plan = plan_training(config, manifest)
    if config.mix.group and plan.per_device_batch % config.mix.group:
        raise ValueError(f"config.mix.group={config.mix.group} must divide the per-device batch "
                         f"{plan.per_device_batch} (train.global_batch {config.train.global_batch} over "
                         f"{jax.device_count()} devices); use a divisor, or 0 for the per-device batch")

    encoder, head = build.build_models(config)
    state, labels, schedule = build.create_state(config, encoder, head, plan.total_steps, jax.random.key(config.seed))
    rules_scales = optim.stage_rules(config.stage, encoder.depth, config.optim.layer_decay)[1]
    optim.log_assignment(state.params, labels, rules_scales)
    trainable = optim.trainable_mask(labels)
    n_train = optim.count_params(state.params, trainable)
    logging.info("trainable parameters: %s of %s", f"{n_train:,}", f"{optim.count_params(state.params):,}")

    def init_from(fresh: TrainState) -> TrainState:
        return build.load_init(fresh, config.init_from, stage=config.stage,
                               target_length=config.model.target_length, posemb=config.model.posemb)

    evaluate, every = build.periodic_fewshot(config, encoder, os.path.join(os.path.abspath(workdir), "bad_audio.txt"))
    task = TrainTask(
        name=f"stage {config.stage}", state=state, schedule=schedule,
        step=make_train_step(encoder, head, build.step_options(config), trainable),
        init_from=init_from if config.init_from else None, postfix=("loss", "nn_accuracy"),
        evaluate=evaluate, eval_every=every, derived=dict(trainable_params=n_train))
    return run_training(config, workdir, plan, task)
