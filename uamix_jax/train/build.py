"""From a config to models, optimizer and a fresh TrainState; and the `init_from` cascade that fills it.

`init_from` may be: a converted AudioMAE directory or `.pth` (the encoder; the head starts fresh), or a training
workdir (stage 1's, for stage 2: encoder, head, BatchNorm statistics and queue; the EMA projector starts as a copy of
the projector, as MAE-CT does). Every loaded array must have the shape of the fresh one (errors name the path).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from uamix_jax.audio.features import resolve_stats
from uamix_jax.interop.workdir import assign_tree, is_training_workdir, restore_state_dict
from uamix_jax.models.head import NNCLRHead
from uamix_jax.models.precision import compute_dtype
from uamix_jax.models.vit import AudioMAEEncoder
from uamix_jax.objectives.queue import init_queue
from uamix_jax.train import optim
from uamix_jax.train.state import TrainState
from uamix_jax.train.step import StepOptions


def build_encoder(config: ml_collections.ConfigDict, **overrides: Any) -> AudioMAEEncoder:
    """The encoder of config.model at config.dtype (fields overridable, e.g. pooling='fc_norm' for fine-tuning)."""
    m = config.model
    fields = dict(target_length=m.target_length, pooling=m.pooling, posemb=m.posemb, remat=m.remat,
                  attention=m.get("attention", "auto"), dtype=compute_dtype(config.dtype))
    fields.update(overrides)
    return AudioMAEEncoder.from_size(m.size, **fields)


def build_models(config: ml_collections.ConfigDict, *, axis_name: str | None = "data") -> tuple[AudioMAEEncoder, NNCLRHead]:
    """The encoder (config.model) and the NNCLR head (config.head) at the config's compute dtype."""
    dtype = compute_dtype(config.dtype)
    encoder = build_encoder(config)
    head = NNCLRHead(
        proj_hidden_dim=config.head.proj_hidden_dim, proj_dim=config.head.proj_dim,
        pred_hidden_dim=config.head.pred_hidden_dim, axis_name=axis_name, dtype=dtype)
    return encoder, head


def step_options(config: ml_collections.ConfigDict) -> StepOptions:
    """The tuning step's static options, read once from the config."""
    a = config.augment
    return StepOptions(
        stage=config.stage,
        target_length=config.model.target_length,
        stats=resolve_stats(config.data.stats),
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


def make_tx(
    config: ml_collections.ConfigDict, params: Any, total_steps: int, depth: int
) -> tuple[Any, Any, dict[str, float], Any]:
    """(optax transform, label tree, lr scale per label, schedule) for config.stage; warmup = round(fraction × total)."""
    o = config.optim
    rules, scales = optim.stage_rules(config.stage, depth, o.layer_decay)
    labels = optim.label_params(params, rules)
    groups = {
        label: optim.Group(lr_scale=scale, weight_decay=o.head_weight_decay if label == "head" else o.encoder_weight_decay)
        for label, scale in scales.items()
    }
    warmup = int(round(o.warmup_fraction * total_steps))
    schedule = optim.warmup_cosine(o.lr, total_steps, warmup)
    tx = optim.make_optimizer(params, labels=labels, groups=groups, schedule=schedule, b1=o.b1, b2=o.b2, eps=o.eps)
    return tx, labels, scales, schedule


def create_state(
    config: ml_collections.ConfigDict, encoder: AudioMAEEncoder, head: NNCLRHead, total_steps: int, key: jax.Array
) -> tuple[TrainState, Any, Any]:
    """(fresh TrainState, label tree, lr schedule): random encoder and head, random unit queue; runs on the host."""
    k_enc, k_head, k_queue = jax.random.split(key, 3)
    x = jnp.zeros((2, encoder.target_length, encoder.num_mel_bins), jnp.float32)
    enc_vars = encoder.init(k_enc, x)
    head_vars = head.clone(axis_name=None).init(k_head, jnp.zeros((2, encoder.width), jnp.float32))
    params = {"encoder": enc_vars["params"], "head": head_vars["params"]}
    tx, labels, _, schedule = make_tx(config, params, total_steps, encoder.depth)
    queue, queue_ids, queue_labels, ptr = init_queue(k_queue, config.nnclr.queue_size, config.head.proj_dim)
    use_ema = config.nnclr.ema_momentum > 0
    state = TrainState.create(
        apply_fn=None,
        params=params,
        tx=tx,
        batch_stats=head_vars["batch_stats"],
        ema_params=params["head"]["projector"] if use_ema else {},
        ema_batch_stats={"projector": head_vars["batch_stats"]["projector"]} if use_ema else {},
        queue=queue,
        queue_ids=queue_ids,
        queue_labels=queue_labels,
        queue_ptr=ptr,
    )
    return state, labels, schedule


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
    changes: dict[str, Any] = {"params": params}
    return state.replace(**changes)


def periodic_fewshot(config: ml_collections.ConfigDict, encoder: AudioMAEEncoder,
                     bad_audio_log: str | None = None) -> tuple[Any, int]:
    """(evaluate(state, step) → {name: value}, every) for config.fewshot.every > 0, else (None, 0).

    N-way K-shot accuracy of the encoder being trained on the labelled set config.fewshot.data, as big_vision's
    few-shot evaluator runs beside training (`uamix_jax.evaluation.periodic`).
    """
    f = config.fewshot
    every = int(f.get("every", 0))
    if every <= 0:
        return None, 0
    from uamix_jax.evaluation.periodic import PeriodicFewShot

    evaluator = PeriodicFewShot.from_config(f, encoder, bad_audio_log=bad_audio_log)

    def evaluate(state: TrainState, step: int) -> dict[str, float]:
        return evaluator(jax.device_get(state.params["encoder"]), step)

    return evaluate, every
