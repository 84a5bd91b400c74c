"""From a config to models, optimizer and a fresh TrainState; and the `init_from` cascade that fills it.

`init_from` may be: a converted AudioMAE directory or `.pth` (the encoder; the head starts fresh), or a training
workdir (stage 1's, for stage 2: encoder, head, BatchNorm statistics and queue; the EMA projector starts as a copy of
the projector, as MAE-CT does). Every loaded array must have the shape of the fresh one (errors name the path).
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from uamix_jax.models.head import NNCLRHead
from uamix_jax.models.vit import AudioMAEEncoder
from uamix_jax.objectives.queue import init_queue
from uamix_jax.train import optim
from uamix_jax.train.state import TrainState

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
    if config.dtype not in DTYPES:
        raise ValueError(f"config.dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
    return DTYPES[config.dtype]


def build_models(config: ml_collections.ConfigDict, *, axis_name: str | None = "data") -> tuple[AudioMAEEncoder, NNCLRHead]:
    """The encoder (config.model) and the NNCLR head (config.head) at the config's compute dtype."""
    dtype = compute_dtype(config)
    m = config.model
    encoder = AudioMAEEncoder.from_size(
        m.size, target_length=m.target_length, pooling=m.pooling, posemb=m.posemb, remat=m.remat, dtype=dtype)
    head = NNCLRHead(
        proj_hidden_dim=config.head.proj_hidden_dim, proj_dim=config.head.proj_dim,
        pred_hidden_dim=config.head.pred_hidden_dim, axis_name=axis_name, dtype=dtype)
    return encoder, head


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
        trainable=tuple(bool(t) for t in jax.tree.leaves(optim.trainable_mask(labels))),
    )
    return state, labels, schedule


def _assign(tree: Any, loaded: Any, what: str, source: str) -> Any:
    """`loaded` in place of `tree`, after checking every path and shape agree."""
    want = {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}
    got = {"/".join(k): v for k, v in traverse_util.flatten_dict(loaded).items()}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    bad = [f"{k}: expected {tuple(want[k].shape)}, found {tuple(np.shape(got[k]))}"
           for k in sorted(set(want) & set(got)) if tuple(want[k].shape) != tuple(np.shape(got[k]))]
    if missing or extra or bad:
        raise ValueError(
            f"{source}: its {what} does not fit config.model/config.head: missing {missing[:6]}, unexpected "
            f"{extra[:6]}, mis-shaped {bad[:6]}. Use the model size, pooling ('fc_norm' for "
            f"fine-tuned AudioMAE checkpoints) and head sizes it was trained with.")
    out = {k: jnp.asarray(got[k], want[k].dtype) for k in want}
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in out.items()})


def is_training_workdir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "checkpoints"))


def load_init(state: TrainState, init_from: str, *, stage: int, target_length: int, posemb: str) -> TrainState:
    """Fills a fresh state from `init_from` (see the module docstring). Optimizer state and step stay fresh."""
    params = dict(state.params)
    if is_training_workdir(init_from):
        from uamix_jax.train.checkpoint import restore_state_dict

        saved = restore_state_dict(init_from)
        params["encoder"] = _assign(params["encoder"], saved["params"]["encoder"], "encoder", init_from)
        if stage == 1:  # a tuned encoder under a fresh head
            logging.info("init_from %s: encoder only (stage 1 trains a fresh head)", init_from)
            return state.replace(params=params)
        params["head"] = _assign(params["head"], saved["params"]["head"], "head", init_from)
        batch_stats = _assign(state.batch_stats, saved["batch_stats"], "head BatchNorm statistics", init_from)
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
    params["encoder"] = _assign(params["encoder"], variables["params"], "AudioMAE encoder", init_from)
    logging.info("init_from %s: AudioMAE encoder; the head starts fresh", init_from)
    changes: dict[str, Any] = {"params": params}
    return state.replace(**changes)
