"""The shared trainer, readable top to bottom: `run_training(config, workdir, manifest, plan, task)`.

Every training task (contrastive tuning `train.tune`, MAE pretraining `train.pretrain`, fine-tuning
`train.finetune`) builds a `TrainTask` and hands it here: mesh → data pipeline → resume cascade (workdir checkpoint >
task.init_from > the task's fresh state) → jitted, donated, sharded step under config.precision → loop with log
(means over `log_every` steps) / evaluation / checkpoint cadence → final checkpoint. The pipeline is closed on every
exit path. Runs the same on one CPU, 8 TPU cores or several hosts (after `jax.distributed.initialize()`): every
process feeds its own rows of the global batch.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from uamix_jax.audio.fbank import SAMPLE_RATE
from uamix_jax.data.bad_audio import BadAudioLog
from uamix_jax.data.manifest import Manifest
from uamix_jax.data.pipeline import Pipeline, bad_audio_log_path, make_pipeline
from uamix_jax.data.summary import dataset_summary
from uamix_jax.models.precision import check_precision
from uamix_jax.schedules import lr_schedule, peak_lr, warmup_steps
from uamix_jax.sharding import data_mesh, global_batch, replicate, shard_step
from uamix_jax.train.checkpoint import Checkpointer
from uamix_jax.train.metrics import MetricWriter
from uamix_jax.train.state import TrainState

Step = Callable[[TrainState, dict[str, jax.Array], jax.Array], tuple[TrainState, dict[str, jax.Array]]]
Metrics = dict[str, float]
PROGRESS_KEYS = ("loss", "accuracy", "nn_accuracy")  # shown on the progress bar when a step reports them


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the step and the last good checkpoint."""


@dataclasses.dataclass(frozen=True)
class TrainTask:
    """What a training task hands the shared loop.

    `state`: the fresh TrainState (`train.state.create_state`). `step(state, batch, key) → (state, metrics)`: per-device
    code over axis 'data' returning scalar metrics, `loss` among them; the loop runs it as jit(shard_map) with the
    state donated. `batch_keys`: the pipeline fields the step reads. `init_from(fresh) → state`: fills the fresh state
    when the workdir has no checkpoint. `evaluate(state, step) → metrics`: runs on the host every `eval_every` steps
    and at the end; its values are logged with the training metrics.
    """

    state: TrainState
    step: Step
    batch_keys: tuple[str, ...]
    init_from: Callable[[TrainState], TrainState] | None = None
    evaluate: Callable[[TrainState, int], Metrics] | None = None
    eval_every: int = 0


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """What the data and the devices decide: steps, warmup and batch sizes."""

    num_clips: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    devices: int
    processes: int
    global_batch: int

    @property
    def per_device_batch(self) -> int:
        return self.global_batch // self.devices


def plan_training(config: ml_collections.ConfigDict, num_clips: int, *, devices: int | None = None,
                  processes: int | None = None) -> TrainingPlan:
    """Steps per epoch and in all (train.total_steps, else epochs × clips // global batch), warmup, batch checks.

    `devices` / `processes`: the job's device and process counts (default: this job's, from the local backend; a
    planner for another machine passes its own).
    """
    t = config.train
    n_dev = jax.device_count() if devices is None else devices
    n_proc = jax.process_count() if processes is None else processes
    if t.global_batch % n_dev or t.global_batch % n_proc:
        raise ValueError(f"config.train.global_batch={t.global_batch} must be divisible by the {n_dev} devices and "
                         f"{n_proc} processes")
    steps_per_epoch = num_clips // t.global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{num_clips} clips make no global batch of {t.global_batch}; lower train.global_batch")
    total = t.total_steps or t.epochs * steps_per_epoch
    return TrainingPlan(num_clips, steps_per_epoch, total, warmup_steps(config.optim, total), n_dev, n_proc,
                        t.global_batch)


def check_group(group: int, per_device_batch: int, field: str) -> int:
    """The samples per mix group (`group`, or the per-device batch for 0); an error unless it divides that batch."""
    size = group or per_device_batch
    if size < 1 or per_device_batch % size:
        raise ValueError(f"config.{field}={group} must divide the per-device batch {per_device_batch} (the global "
                         f"batch over the devices); use a divisor, or 0 for the per-device batch")
    return size


def write_config(config: ml_collections.ConfigDict, workdir: str, plan: TrainingPlan) -> None:
    """`<workdir>/config.json`: the config as run, plus the values derived at run time (`derived`)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    derived = dict(dataclasses.asdict(plan), per_device_batch=plan.per_device_batch,
                   peak_lr=peak_lr(config.optim, plan.global_batch))
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        json.dump({**config.to_dict(), "derived": derived}, f, indent=1, sort_keys=True, default=str)


def _mean_metrics(history: list[tuple[int, dict[str, jax.Array]]]) -> Metrics:
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


def run_training(config: ml_collections.ConfigDict, workdir: str, manifest: Manifest, plan: TrainingPlan,
                 task: TrainTask) -> TrainState:
    """Trains `task` on `manifest` in `workdir` for plan.total_steps, resuming from the workdir's latest checkpoint."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    mesh = data_mesh()
    n_proc, t = jax.process_count(), config.train
    precision = check_precision(config.precision)

    # ---- data: every process reads its rows of each global batch
    bad_log = BadAudioLog(bad_audio_log_path(os.path.join(workdir, "bad_audio.txt"), jax.process_index(), n_proc))
    pipeline = make_pipeline(
        manifest, batch_size=t.global_batch // n_proc,
        clip_samples=int(round(config.data.clip_seconds * SAMPLE_RATE)), seed=config.seed, train=True,
        process_index=jax.process_index(), process_count=n_proc, worker_count=config.data.worker_count,
        on_bad_audio=config.data.on_bad_audio, bad_audio_log=bad_log, sample_rate=SAMPLE_RATE)
    try:
        if jax.process_index() == 0:
            logging.info("%s", dataset_summary(manifest, bad_count=bad_log.count))

        # ---- resume cascade: workdir > init_from > fresh
        state = task.state
        checkpointer = Checkpointer(workdir, keep=t.keep_checkpoints)
        resumed = checkpointer.latest_step()
        if resumed is not None:
            state = checkpointer.restore(state, resumed, data_iterator=pipeline)
            logging.info("resumed from %s at step %d", checkpointer.directory, resumed)
        elif task.init_from is not None:
            state = task.init_from(state)
        write_config(config, workdir, plan)
        writer = MetricWriter(workdir, resume_step=int(state.step))
        state = replicate(state, mesh)
        with jax.default_matmul_precision(precision):
            state = _loop(config, plan, task, state, mesh=mesh, pipeline=pipeline, checkpointer=checkpointer,
                          writer=writer)
        checkpointer.close()
        writer.close()
    finally:
        pipeline.close()
    if bad_log.count:
        logging.warning("%d bad audio files were skipped; see %s", bad_log.count, bad_log.path)
    return state


def _loop(config: ml_collections.ConfigDict, plan: TrainingPlan, task: TrainTask, state: TrainState, *,
          mesh: jax.sharding.Mesh, pipeline: Pipeline, checkpointer: Checkpointer,
          writer: MetricWriter) -> TrainState:
    t, total = config.train, plan.total_steps
    train_step = shard_step(task.step, mesh)
    schedule = lr_schedule(config.optim, plan.global_batch, total)
    key = jax.random.key(config.seed + 1)
    start = int(state.step)
    history: list[tuple[int, dict[str, jax.Array]]] = []
    bar = tqdm(total=total, initial=start, desc=config.task, unit="step",
               disable=not config.progress or jax.process_index() != 0, dynamic_ncols=True)
    tick, tick_step = time.perf_counter(), start
    for step in range(start + 1, total + 1):
        batch = next(pipeline)
        state, metrics = train_step(state, global_batch({k: batch[k] for k in task.batch_keys}, mesh), key)
        history.append((step, metrics))
        is_last = step == total
        row: Metrics = {}
        if step % t.log_every == 0 or is_last:
            _check_finite(history, checkpointer)
            row = _mean_metrics(history)
            history.clear()
            row.update(lr=float(schedule(step - 1)), epoch=(step - 1) // plan.steps_per_epoch)
            now = time.perf_counter()
            bar.set_postfix({**{k: f"{row[k]:.4g}" for k in PROGRESS_KEYS if k in row},
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
