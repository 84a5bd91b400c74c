"""uaMix-MAE contrastive tuning (docs/method.md, "Progressive retraining"), stage 1 or 2, on the shared trainer.

    python -m uamix_jax.main --config=configs/stage1.py --workdir=W1 --config.init_from=ckpt/audiomae
    python -m uamix_jax.main --config=configs/stage2.py --workdir=W2 --config.init_from=W1

`tune_task(config, plan)` builds what the trainer runs: the encoder (config.model) and NNCLR head (config.head), a
fresh state (random encoder and head, random unit queue; `train.state.create_state`), the stage's optimizer groups
(stage 1: head only; stage 2: blocks L/2..L−1 with layer decay, the final norm and the head), the per-device step
(`train.tune_step`) and the `init_from` filler. `init_from` may be a converted AudioMAE directory or `.pth` (the
encoder; the head starts fresh), or a training workdir: stage 1's, for stage 2 (encoder, head, BatchNorm statistics
and queue; the EMA projector starts as a copy of the projector, as MAE-CT does), or any workdir's encoder for stage 1.
Every loaded array must have the shape of the fresh one (errors name the path).
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from uamix_jax.audio.features import resolve_stats
from uamix_jax.data.bad_audio import check_manifest
from uamix_jax.data.layouts import read_configured_dataset
from uamix_jax.evaluation.periodic import periodic_fewshot
from uamix_jax.interop.workdir import assign_tree, is_training_workdir, restore_state_dict
from uamix_jax.models.head import NNCLRHead
from uamix_jax.models.precision import compute_dtype
from uamix_jax.models.vit import AudioMAEEncoder
from uamix_jax.objectives.queue import init_queue
from uamix_jax.sharding import AXIS
from uamix_jax.train import optim
from uamix_jax.train.loop import TrainingPlan, TrainTask, check_group, plan_training, run_training
from uamix_jax.train.state import StateInit, TrainState, create_state
from uamix_jax.train.tune_step import TuneOptions, make_tune_step

BATCH_KEYS = ("waveform", "length", "index", "label")


def build_models(config: ml_collections.ConfigDict, *, axis_name: str | None = AXIS
                 ) -> tuple[AudioMAEEncoder, NNCLRHead]:
    """The encoder (config.model) and the NNCLR head (config.head) at the config's compute dtype."""
    encoder = AudioMAEEncoder.from_config(config.model, dtype=config.dtype)
    head = NNCLRHead(proj_hidden_dim=config.head.proj_hidden_dim, proj_dim=config.head.proj_dim,
                     pred_hidden_dim=config.head.pred_hidden_dim, axis_name=axis_name,
                     dtype=compute_dtype(config.dtype))
    return encoder, head


def tune_options(config: ml_collections.ConfigDict, mix_group: int) -> TuneOptions:
    """The tuning step's static options, read once from the config."""
    a = config.augment
    return TuneOptions(
        stage=config.stage, target_length=config.model.target_length, stats=resolve_stats(config.data.stats),
        gain=(a.gain_min, a.gain_max) if a.gain_max > 0 else None, freq_mask=a.freq_mask, time_mask=a.time_mask,
        mix_method=config.mix.method, mix_alpha=config.mix.alpha, mix_width=config.mix.width, mix_group=mix_group,
        label_smoothing=config.mix.label_smoothing, temperature=config.nnclr.temperature, top_k=config.nnclr.top_k,
        ema_momentum=config.nnclr.ema_momentum)


def tune_groups(config: ml_collections.ConfigDict, depth: int) -> optim.Groups:
    """The stage's rules (`optim.stage_rules`); the head decays by optim.head_weight_decay, the encoder by
    optim.weight_decay."""
    o = config.optim
    rules, scales = optim.stage_rules(config.stage, depth, o.layer_decay)
    return optim.Groups(tuple(rules), {
        label: optim.Group(scale, o.head_weight_decay if label == "head" else o.weight_decay)
        for label, scale in scales.items()})


def tune_init(config: ml_collections.ConfigDict, encoder: AudioMAEEncoder, head: NNCLRHead) -> StateInit:
    """key → the tuning state's fields: random encoder and head, random unit queue, EMA projector (stage 2)."""
    use_ema = config.nnclr.ema_momentum > 0

    def init(key: jax.Array) -> dict[str, Any]:
        k_enc, k_head, k_queue = jax.random.split(key, 3)
        enc_vars = encoder.init(k_enc, jnp.zeros((2, encoder.target_length, encoder.num_mel_bins), jnp.float32))
        head_vars = head.clone(axis_name=None).init(k_head, jnp.zeros((2, encoder.width), jnp.float32))
        queue, queue_ids, queue_labels, ptr = init_queue(k_queue, config.nnclr.queue_size, config.head.proj_dim)
        return dict(
            params={"encoder": enc_vars["params"], "head": head_vars["params"]},
            batch_stats=head_vars["batch_stats"],
            ema_params=head_vars["params"]["projector"] if use_ema else {},
            ema_batch_stats={"projector": head_vars["batch_stats"]["projector"]} if use_ema else {},
            queue=queue, queue_ids=queue_ids, queue_labels=queue_labels, queue_ptr=ptr)

    return init


_FIT_HINT = ("Use the model size, pooling ('fc_norm' for fine-tuned AudioMAE checkpoints) and head sizes it was "
             "trained with.")


def load_init(state: TrainState, init_from: str, *, stage: int, target_length: int, posemb: str) -> TrainState:
    """Fills a fresh state from `init_from` (see the module docstring). Optimizer state and step stay fresh."""
    params = dict(state.params)
    if is_training_workdir(init_from):
        saved = restore_state_dict(init_from)
        params["encoder"] = assign_tree(params["encoder"], saved["params"]["encoder"], "encoder", init_from,
                                        hint=_FIT_HINT)
        if stage == 1:  # a tuned encoder under a fresh head
            logging.info("init_from %s: encoder only (stage 1 trains a fresh head)", init_from)
            return state.replace(params=params)
        if "head" not in saved["params"]:
            raise ValueError(f"{init_from}: stage 2 starts from a stage-1 workdir (encoder, head, queue), but this "
                             f"workdir holds {sorted(saved['params'])}; run stage 1 from it first")
        params["head"] = assign_tree(params["head"], saved["params"]["head"], "head", init_from, hint=_FIT_HINT)
        batch_stats = assign_tree(state.batch_stats, saved["batch_stats"], "head BatchNorm statistics", init_from,
                                  hint=_FIT_HINT)
        queue = jnp.asarray(saved["queue"], jnp.float32)
        if queue.shape != state.queue.shape:
            raise ValueError(f"{init_from}: queue is {queue.shape}, this config wants {state.queue.shape} "
                             f"(config.nnclr.queue_size × config.head.proj_dim)")
        changes = dict(
            params=params, batch_stats=batch_stats, queue=queue,
            queue_ids=jnp.asarray(saved["queue_ids"], jnp.int32),
            queue_labels=jnp.asarray(saved["queue_labels"], jnp.int32),
            queue_ptr=jnp.asarray(saved["queue_ptr"], jnp.int32),
        )
        if state.ema_params:  # MAE-CT: the target projector starts as the stage-1 projector
            changes.update(ema_params=params["head"]["projector"], ema_batch_stats={"projector": batch_stats["projector"]})
        logging.info("init_from %s: encoder, head, BatchNorm statistics and queue (step %s)", init_from,
                     int(np.asarray(saved["step"])))
        return state.replace(**changes)

    from uamix_jax.interop.audiomae import load_audiomae

    _, variables = load_audiomae(init_from, target_length=target_length, posemb=posemb)
    params["encoder"] = assign_tree(params["encoder"], variables["params"], "AudioMAE encoder", init_from,
                                    hint=_FIT_HINT)
    logging.info("init_from %s: AudioMAE encoder; the head starts fresh", init_from)
    return state.replace(params=params)


def tune_task(config: ml_collections.ConfigDict, plan: TrainingPlan, *, abstract: bool = False,
              workdir: str | None = None) -> TrainTask:
    """The tuning task for the shared loop (module docstring). abstract=True: shapes only, nothing allocated, no
    init_from and no evaluation (for planners and benchmarks)."""
    group = check_group(config.mix.group, plan.per_device_batch, "mix.group")
    encoder, head = build_models(config)
    state, labels = create_state(config, tune_init(config, encoder, head), tune_groups(config, encoder.depth),
                                 plan.total_steps, jax.random.key(config.seed), abstract=abstract)
    step = make_tune_step(encoder, head, tune_options(config, group), optim.trainable_mask(labels))
    if abstract:
        return TrainTask(state=state, step=step, batch_keys=BATCH_KEYS)

    def init_from(fresh: TrainState) -> TrainState:
        return load_init(fresh, config.init_from, stage=config.stage, target_length=config.model.target_length,
                         posemb=config.model.posemb)

    evaluate, every = periodic_fewshot(config, encoder, workdir)
    return TrainTask(state=state, step=step, batch_keys=BATCH_KEYS,
                     init_from=init_from if config.init_from else None, evaluate=evaluate, eval_every=every)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """uaMix-MAE contrastive tuning, config.stage 1 or 2, in `workdir` (resumes when it has checkpoints).

    With config.fewshot.every > 0 and labelled config.fewshot.data, N-way K-shot accuracy of the encoder is
    evaluated every that many steps and at the end, and logged beside the loss.
    """
    workdir = os.path.abspath(workdir)
    manifest = read_configured_dataset(config.data, workdir=workdir, seed=config.seed)
    check_manifest(manifest)
    plan = plan_training(config, len(manifest))
    return run_training(config, workdir, manifest, plan, tune_task(config, plan, workdir=workdir))
