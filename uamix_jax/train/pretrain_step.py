"""AudioMAE's masked-autoencoder pretraining step (docs/method.md, "MAE pretraining"), per device over axis 'data'.

One step on a global batch of B clips:

    waveform → Kaldi fbank → crop / pad to T frames (a random crop of longer clips), optional gain, normalise
    → patchify (target [B, N, 256]) → unstructured masking, keep int(N (1 − 0.8)) tokens per clip
    → encoder on the kept tokens + cls → plain decoder on all N positions → mae_loss (norm_pix, masked patches only)
    → AdamW (`train.pretrain` builds the optimizer).

Every draw (crop, gain, mask) is keyed by fold_in(step key, the clip's index in the global batch), never by device,
so the same global batch gives the same step on 1 or 8 devices. The loss is the global mean over masked patches
(psum), so the gradients of the replicated parameters arrive already reduced (see `uamix_jax.train.tune_step`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from uamix_jax.audio.augment import augment_view
from uamix_jax.audio.features import waveform_to_fbank
from uamix_jax.models.mae import MAEDecoder, num_keep, patchify, random_masking
from uamix_jax.models.vit import AudioMAEEncoder
from uamix_jax.objectives.mae import mae_loss
from uamix_jax.sharding import AXIS, device_varying
from uamix_jax.train.state import TrainState

Batch = dict[str, jax.Array]
Step = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class PretrainOptions:
    """Static (hashable) options of the pretraining step, read once from the config (`train.pretrain`)."""

    target_length: int
    stats: tuple[float, float]
    mask_ratio: float = 0.8
    norm_pix_loss: bool = True
    gain: tuple[float, float] | None = (0.5, 1.5)
    gain_beta: float = 10.0  # AudioMAE's roll_mag_aug: gain = 0.5 + Beta(10, 10); 0 = uniform over `gain`


def make_pretrain_step(encoder: AudioMAEEncoder, decoder: MAEDecoder, options: PretrainOptions) -> Step:
    """The per-device step(state, batch, key) → (state, {'loss', 'grad_norm'}); run it in shard_map over 'data'.

    batch: device-local rows of `waveform` [b, S] float32 and `length` [b] int32 (valid samples). key: the run's
    base key; the step folds in state.step. state.params = {'encoder', 'decoder'}, all trained.
    """
    o = options
    n_keep = num_keep(encoder.num_patches, o.mask_ratio)

    def step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        b = batch["waveform"].shape[0]
        gidx = jax.lax.axis_index(AXIS) * b + jnp.arange(b, dtype=jnp.int32)  # position in the global batch
        step_key = jax.random.fold_in(key, state.step)
        k_view, k_mask = jax.random.fold_in(step_key, 0), jax.random.fold_in(step_key, 1)

        fbank, n_valid = waveform_to_fbank(batch["waveform"], batch["length"])
        x = jax.vmap(lambda i, f, n: augment_view(
            jax.random.fold_in(k_view, i), f, n, target_length=o.target_length, gain=o.gain, freq_mask=0,
            time_mask=0, stats=o.stats, gain_beta=o.gain_beta))(gidx, fbank, n_valid)
        target = patchify(x, encoder.patch_size)
        keep, mask = random_masking(k_mask, gidx, encoder.num_patches, n_keep)

        def loss_fn(params: Any) -> jax.Array:
            params = device_varying(params)  # the gradients are summed over devices in float32
            tokens, _ = encoder.apply({"params": params["encoder"]}, x, keep=keep)
            pred = decoder.apply({"params": params["decoder"]}, tokens, keep)
            return mae_loss(pred, target, mask, norm_pix=o.norm_pix_loss, axis_name=AXIS)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_trainable_gradients(grads), {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return step
