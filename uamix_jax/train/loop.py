"""`train_and_evaluate(config, workdir)`: the whole uaMix-MAE run, readable top to bottom.

mesh → data → models → fresh state → resume cascade (workdir checkpoint > config.init_from > random) → jitted,
donated, sharded step → loop with log / checkpoint cadence → final checkpoint. Runs the same on one CPU, 8 TPU cores
or several hosts (after `jax.distributed.initialize()`): every process feeds its own rows of the global batch.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from uamix_jax.audio.features import DATASET_STATS
from uamix_jax.data.bad_audio import BadAudioLog, check_manifest
from uamix_jax.data.layouts import read_dataset
from uamix_jax.data.manifest import Manifest
from uamix_jax.data.pipeline import bad_audio_log_path, make_pipeline
from uamix_jax.data.summary import dataset_summary
from uamix_jax.train import build, optim
from uamix_jax.train.checkpoint import Checkpointer
from uamix_jax.train.metrics import MetricWriter
from uamix_jax.train.step import (
    StepOptions, data_mesh, global_batch, make_train_step, replicate, shard_train_step)
from uamix_jax.train.state import TrainState

SAMPLE_RATE = 16000
# Fault injection for the kill-and-resume test: after this step (and its pending checkpoint), SIGKILL ourselves.
KILL_AT_STEP_ENV = "UAMIX_FAULT_KILL_AT_STEP"


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the step and the last good checkpoint."""


def load_manifest(data: ml_collections.ConfigDict) -> Manifest:
    """The training manifest of config.data (one split of it when data.split is set)."""
    options = {"tfds_name": data.tfds_name} if data.name == "tfds" else {}
    manifest = read_dataset(data.name, data.root, **options)
    if data.split:
        if data.split not in set(manifest.splits):
            raise ValueError(f"config.data.split={data.split!r} is not a split of {data.name} at {data.root}; it has "
                             f"{sorted(set(manifest.splits))} (use '' for every clip)")
        manifest = manifest.filter(split=data.split)
    return manifest


def step_options(config: ml_collections.ConfigDict) -> StepOptions:
    stats = config.data.stats
    a = config.augment
    return StepOptions(
        stage=config.stage,
        target_length=config.model.target_length,
        stats=tuple(DATASET_STATS[stats]) if isinstance(stats, str) else tuple(stats),
        gain=(a.gain_min, a.gain_max) if a.gain_max > 0 else None,
        freq_mask=a.freq_mask,
        time_mask=a.time_mask,
        mix_method=config.mix.method,
        mix_alpha=config.mix.alpha,
        mix_width=config.mix.width,
        mix_group=config.mix.group,
        label_smoothing=config.mix.label_smoothing,
        temperature=config.nnclr.temperature,
        top_k=config.nnclr.top_k,
        ema_momentum=config.nnclr.ema_momentum,
    )


def write_config(config: ml_collections.ConfigDict, workdir: str, **derived: Any) -> None:
    """`<workdir>/config.json`: the config as run, plus the values derived at run time."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    record = {**config.to_dict(), "derived": derived}
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True, default=str)


def _check_finite(history: list[tuple[int, jax.Array]], checkpointer: Checkpointer) -> None:
    """Raises NonFiniteLossError at the first non-finite loss in `history` (then cleared)."""
    if not history:
        return
    losses = np.asarray(jax.device_get(jnp.stack([loss for _, loss in history])))
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        step = history[int(bad[0])][0]
        checkpointer.wait()
        good = checkpointer.latest_step()
        raise NonFiniteLossError(
            f"loss is {losses[bad[0]]} at step {step}; training stopped. The last good checkpoint is step {good} in "
            f"{checkpointer.directory} (kept intact). Lower config.optim.lr, check the data for silent or broken "
            f"clips, or use config.dtype='float32'.")
    history.clear()


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains config.stage of uaMix-MAE in `workdir`, resuming from its latest checkpoint when there is one."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    mesh = data_mesh()
    n_dev, n_proc = jax.device_count(), jax.process_count()
    t = config.train

    # ---- data
    manifest = load_manifest(config.data)
    check_manifest(manifest)
    if t.global_batch % n_dev or t.global_batch % n_proc:
        raise ValueError(f"config.train.global_batch={t.global_batch} must be divisible by the {n_dev} devices and "
                         f"{n_proc} processes")
    per_device = t.global_batch // n_dev
    if config.mix.group and per_device % config.mix.group:
        raise ValueError(f"config.mix.group={config.mix.group} must divide the per-device batch {per_device}")
    steps_per_epoch = len(manifest) // t.global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{len(manifest)} clips make no global batch of {t.global_batch}; lower train.global_batch")
    total_steps = t.total_steps or t.epochs * steps_per_epoch
    bad_log = BadAudioLog(bad_audio_log_path(os.path.join(workdir, "bad_audio.txt"), jax.process_index(), n_proc))
    pipeline = make_pipeline(
        manifest, batch_size=t.global_batch // n_proc, clip_samples=int(round(config.data.clip_seconds * SAMPLE_RATE)),
        seed=config.seed, train=True, process_index=jax.process_index(), process_count=n_proc,
        worker_count=config.data.worker_count, on_bad_audio=config.data.on_bad_audio, bad_audio_log=bad_log,
        sample_rate=SAMPLE_RATE)
    if jax.process_index() == 0:
        logging.info("%s", dataset_summary(manifest, bad_count=bad_log.count))

    # ---- models, optimizer, fresh state
    encoder, head = build.build_models(config)
    state, labels, schedule = build.create_state(
        config, encoder, head, total_steps, jax.random.key(config.seed))
    rules_scales = optim.stage_rules(config.stage, encoder.depth, config.optim.layer_decay)[1]
    optim.log_assignment(state.params, labels, rules_scales)
    n_train = optim.count_params(state.params, optim.trainable_mask(labels))
    logging.info("trainable parameters: %s of %s", f"{n_train:,}", f"{optim.count_params(state.params):,}")

    # ---- resume cascade: workdir > init_from > random
    checkpointer = Checkpointer(workdir, keep=t.keep_checkpoints)
    resumed = checkpointer.latest_step()
    if resumed is not None:
        state = checkpointer.restore(state, resumed, data_iterator=pipeline)
        logging.info("resumed from %s at step %d", checkpointer.directory, resumed)
    elif config.init_from:
        state = build.load_init(state, config.init_from, stage=config.stage,
                                target_length=config.model.target_length, posemb=config.model.posemb)
    write_config(config, workdir, total_steps=total_steps, steps_per_epoch=steps_per_epoch, devices=n_dev,
                 processes=n_proc, per_device_batch=per_device, trainable_params=n_train,
                 warmup_steps=int(round(config.optim.warmup_fraction * total_steps)), clips=len(manifest))
    writer = MetricWriter(workdir, resume_step=int(state.step))
    state = replicate(state, mesh)

    # ---- the step
    train_step = shard_train_step(make_train_step(encoder, head, step_options(config)), mesh)
    key = jax.random.key(config.seed + 1)

    # ---- loop
    start = int(state.step)
    history: list[tuple[int, jax.Array]] = []
    bar = tqdm(total=total_steps, initial=start, desc=f"stage {config.stage}", unit="step",
               disable=not t.progress or jax.process_index() != 0, dynamic_ncols=True)
    tick, tick_step = time.perf_counter(), start
    for step in range(start + 1, total_steps + 1):
        batch = next(pipeline)
        state, metrics = train_step(state, global_batch({k: batch[k] for k in ("waveform", "length", "index", "label")},
                                                       mesh), key)
        history.append((step, metrics["loss"]))
        is_last = step == total_steps
        if step % t.log_every == 0 or is_last:
            _check_finite(history, checkpointer)
            row = {k: float(v) for k, v in jax.device_get(metrics).items()}
            row.update(lr=float(schedule(step - 1)), epoch=(step - 1) // steps_per_epoch)
            writer.write(step, row)
            now = time.perf_counter()
            bar.set_postfix(loss=f"{row['loss']:.4f}", nn_acc=f"{row['nn_accuracy']:.3f}",
                            steps_s=f"{(step - tick_step) / max(now - tick, 1e-9):.2f}")
            tick, tick_step = now, step
        if step % t.checkpoint_every == 0 or is_last:
            _check_finite(history, checkpointer)
            _check_params(state, step, checkpointer)
            checkpointer.save(step, state, pipeline, force=is_last)
        bar.update(1)
        if os.environ.get(KILL_AT_STEP_ENV) == str(step):
            checkpointer.wait()
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    checkpointer.close()
    writer.close()
    if bad_log.count:
        logging.warning("%d bad audio files were skipped; see %s", bad_log.count, bad_log.path)
    return state
