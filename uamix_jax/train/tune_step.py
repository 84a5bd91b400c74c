"""One uaMix-MAE tuning step, written per device (axis 'data') and run as jit(shard_map(...)) over a 1-D mesh.

waveform → Kaldi fbank → two augmented views → T-CutMix on the anchor view (fixed mix groups) → ViT encoder →
pooled embedding → head (online projector + predictor; EMA projector in stage 2) → NN look-up in the queue → soft
NNCLR loss (Eq. 4; negatives = the global batch) → gradients of the trainable subtree only → optax → EMA and queue
updates. Every random draw is keyed by fold_in(step key, global sample or group index), never by device index, so
the same global batch gives the same step on 1, 4 or 8 devices.

The loss is the global mean (psum over the axis), so with shard_map's default check_vma the gradients w.r.t. the
replicated parameters come out already reduced over devices: no extra pmean. The trained parameters enter the loss
through `sharding.device_varying`, so that reduction sums float32 gradients, also under a bfloat16 compute dtype.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from uamix_jax.audio.augment import make_views
from uamix_jax.audio.features import waveform_to_fbank
from uamix_jax.models.head import NNCLRHead
from uamix_jax.models.vit import AudioMAEEncoder
from uamix_jax.objectives.losses import soft_nnclr_loss, soft_targets
from uamix_jax.objectives.mixing import mix_groups
from uamix_jax.objectives.neighbours import nearest_neighbour_with_index
from uamix_jax.objectives.queue import update_queue
from uamix_jax.sharding import AXIS, device_varying
from uamix_jax.train.optim import merge_trainable, split_trainable
from uamix_jax.train.state import TrainState, ema_update

Batch = dict[str, jax.Array]
Step = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class TuneOptions:
    """Static (hashable) options of the tuning step; built once from the config (`uamix_jax.train.tune`)."""

    stage: int
    target_length: int
    stats: tuple[float, float]
    gain: tuple[float, float] | None = (0.5, 1.5)
    freq_mask: int = 48
    time_mask: int = 192
    mix_method: str = "t_cutmix"
    mix_alpha: float = 1.0
    mix_width: str = "sqrt"
    mix_group: int = 16  # samples per mix group (one λ and box each); 0: the per-device batch
    label_smoothing: float = 0.0
    temperature: float = 0.15
    top_k: int = 1
    ema_momentum: float = 0.0  # 0: no EMA projector (stage 1); MAE-CT's 0.99 in stage 2


def _head_apply(head: NNCLRHead, params: Any, stats: Any, emb: jax.Array) -> tuple[tuple[jax.Array, jax.Array], Any]:
    (z, p), updates = head.apply({"params": params, "batch_stats": stats}, emb, train=True, mutable=["batch_stats"])
    return (z, p), updates["batch_stats"]


def _ema_project(head: NNCLRHead, params: Any, stats: Any, emb: jax.Array) -> jax.Array:
    z, _ = head.apply(
        {"params": {"projector": params}, "batch_stats": {"projector": stats}},
        emb,
        train=True,
        method=NNCLRHead.project,
        mutable=["batch_stats"],
    )
    return jax.lax.stop_gradient(z)


def make_tune_step(encoder: AudioMAEEncoder, head: NNCLRHead, options: TuneOptions, trainable: Any) -> Step:
    """The per-device step(state, batch, key) → (state, metrics); call it inside shard_map over axis 'data'.

    `trainable`: the params tree of bools saying which leaves train (`optim.trainable_mask(labels)`); only those
    are differentiated and updated.
    batch: device-local rows of `waveform` [b, N] float32, `length` [b] int32, `index` [b] int32 (clip id: the queue's
    sample id), `label` [b] int32 (−1 unknown; only for the neighbours' label accuracy). key: the run's base key;
    the step folds in state.step. head must be built with axis_name='data'.
    """
    o = options

    def step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array):
        b = batch["waveform"].shape[0]
        device = jax.lax.axis_index(AXIS)
        offset = device * b  # this device's first row in the global batch
        gidx = offset + jnp.arange(b, dtype=jnp.int32)
        group = o.mix_group or b
        step_key = jax.random.fold_in(key, state.step)
        k_views, k_mix, k_nn_a, k_nn_b = (jax.random.fold_in(step_key, i) for i in range(4))

        fbank, n_valid = waveform_to_fbank(batch["waveform"], batch["length"])
        view_a, view_b = make_views(
            k_views, fbank, n_valid, gidx, target_length=o.target_length, gain=o.gain,
            freq_mask=o.freq_mask, time_mask=o.time_mask, stats=o.stats,
        )
        mixed, lam, perm = mix_groups(
            k_mix, view_a, group_size=group, method=o.mix_method, alpha=o.mix_alpha,
            first_group_index=offset // group, width=o.mix_width,
        )
        targets = soft_targets(lam, perm, axis_name=AXIS)
        x = jnp.concatenate([mixed, view_b], axis=0)  # one encoder call for both views
        ids = batch["index"]

        train_params, frozen = split_trainable(state.params, trainable)

        if o.stage == 1:  # the encoder is frozen: run it outside the gradient
            _, emb_frozen = encoder.apply({"params": state.params["encoder"]}, x)
            emb_frozen = jax.lax.stop_gradient(emb_frozen)

        def loss_fn(train_params):
            params = merge_trainable(device_varying(train_params), frozen)  # float32 gradient sums
            if o.stage == 1:
                emb = emb_frozen
            else:
                _, emb = encoder.apply({"params": params["encoder"]}, x)
            emb_a, emb_b = emb[:b], emb[b:]
            # BatchNorm statistics per view (MAE-CT runs each view through the head on its own)
            (z_a, p_a), stats = _head_apply(head, params["head"], state.batch_stats, emb_a)
            (z_b, p_b), stats = _head_apply(head, params["head"], stats, emb_b)
            if o.ema_momentum > 0:
                z_a = _ema_project(head, state.ema_params, state.ema_batch_stats["projector"], emb_a)
                z_b = _ema_project(head, state.ema_params, state.ema_batch_stats["projector"], emb_b)
            nn_a, _ = nearest_neighbour_with_index(
                z_a, state.queue, state.queue_ids, ids, top_k=o.top_k, key=k_nn_a, first_index=offset)
            nn_b, nn_b_index = nearest_neighbour_with_index(
                z_b, state.queue, state.queue_ids, ids, top_k=o.top_k, key=k_nn_b, first_index=offset)
            loss = soft_nnclr_loss(
                p_a, p_b, nn_a, nn_b, targets, o.temperature, axis_name=AXIS, label_smoothing=o.label_smoothing)
            return loss, (stats, jax.lax.stop_gradient(z_b), nn_b_index)

        (loss, (batch_stats, z_b, nn_index)), grads = jax.value_and_grad(loss_fn, has_aux=True)(train_params)

        changes: dict[str, Any] = {"batch_stats": batch_stats}
        new_state = state.apply_trainable_gradients(grads, **changes)
        if o.ema_momentum > 0:
            new_state = new_state.replace(
                ema_params=ema_update(state.ema_params, new_state.params["head"]["projector"], o.ema_momentum),
                # MAE-CT copies the BatchNorm running statistics into the target projector
                ema_batch_stats={"projector": batch_stats["projector"]},
            )
        queue, queue_ids, queue_labels, ptr = update_queue(
            state.queue, state.queue_ids, state.queue_ptr, z_b, ids,
            labels=batch["label"], queue_labels=state.queue_labels, axis_name=AXIS,
        )
        new_state = new_state.replace(queue=queue, queue_ids=queue_ids, queue_labels=queue_labels, queue_ptr=ptr)

        nn_label = state.queue_labels[nn_index]
        known = (batch["label"] >= 0) & (nn_label >= 0)
        hits = jax.lax.psum(jnp.sum(known & (nn_label == batch["label"])), AXIS)
        counted = jax.lax.psum(jnp.sum(known), AXIS)
        metrics = {
            "loss": loss,
            "nn_accuracy": jnp.where(counted > 0, hits / jnp.maximum(counted, 1), jnp.nan),
            "grad_norm": optax.tree.norm(grads),
            "lam_mean": jax.lax.pmean(jnp.mean(lam), AXIS),
        }
        return new_state, metrics

    return step
