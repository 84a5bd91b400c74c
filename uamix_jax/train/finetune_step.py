"""AudioMAE's fine-tuning step (docs/method.md, "Fine-tuning"), per device over axis 'data'.

One training step on a global batch of B clips:

    waveform mixup (multi-label sets; prob p, λ ~ Beta(a, a), partner in the clip's mix group):
        w_i ← λ_i w_i + (1 − λ_i) w_j[:len_i],   y_i ← λ_i y_i + (1 − λ_i) y_j
    Kaldi fbank → augment_view (random crop to T frames, optional gain, SpecAugment 48 / 192·T/1024, normalise)
    → 2-D token masking (keep int(T'·0.8) rows × int(F'·0.8) columns) → ViT (drop path) → fc_norm(mean tokens)
    → linear head → loss:  BCE(logits, y) averaged over B·C (multi-label), or
                           CE(logits, (1 − ε) onehot + ε / C) averaged over B (single-label, ε = 0.1)
    → AdamW with layer-wise lr decay (`optim.finetune_rules`).

Every random draw (mixup, augmentation, token mask, drop path) is keyed by fold_in(step key, global sample index),
never by device, and mixup partners come from fixed groups of `mix_group` consecutive samples, so the same global
batch gives the same step on 1 or 8 devices. The loss is the global mean (psum), so the gradients of the replicated
parameters arrive reduced (see `uamix_jax.train.tune_step`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from uamix_jax.audio.augment import augment_view
from uamix_jax.audio.features import waveform_to_fbank
from uamix_jax.models.masking import structured_keep_indices
from uamix_jax.models.vit import AudioMAEEncoder
from uamix_jax.sharding import AXIS, device_varying
from uamix_jax.train.state import TrainState

HEAD_INIT_STD = 2e-5  # AudioMAE: trunc_normal_(head.weight, std=2e-5)

Batch = dict[str, jax.Array]
Step = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]


def classifier_head(num_classes: int) -> nn.Dense:
    """AudioMAE's fresh `head`: Linear(D → C), kernel ~ N(0, 2e-5²), zero bias, float32.

    timm's trunc_normal_(std=2e-5) cuts at ±2 in absolute value, i.e. 10⁵ standard deviations: a plain normal.
    """
    return nn.Dense(num_classes, kernel_init=nn.initializers.normal(stddev=HEAD_INIT_STD),
                    bias_init=nn.initializers.zeros, dtype=jnp.float32, param_dtype=jnp.float32, name="head")


@dataclasses.dataclass(frozen=True)
class FinetuneOptions:
    """Static options of the fine-tuning step (hashable; built once from the config)."""

    num_classes: int
    target_length: int
    stats: str | tuple[float, float]  # a key of DATASET_STATS or (mean, std)
    multilabel: bool  # BCE on multi-hot targets; else CE with label smoothing
    label_smoothing: float = 0.1
    mixup_prob: float = 0.0
    mixup_alpha: float = 10.0
    mix_group: int = 4  # samples per mixup group (partners come from it); 0: the per-device batch
    gain: tuple[float, float] | None = None
    gain_beta: float = 0.0  # > 0: gain = lo + (hi − lo)·Beta(gain_beta, gain_beta) (AudioMAE's roll_mag_aug: 10)
    freq_mask: int = 48
    time_mask: int = 192  # at T = 1024; scaled with T by augment_view
    mask_t_prob: float = 0.2
    mask_f_prob: float = 0.2
    multi_hot: bool = False  # targets come from batch['multi_hot'] [b, C] (else one-hot of batch['label'])

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """The pipeline fields the step reads."""
        return ("waveform", "length", "label", "multi_hot") if self.multi_hot else ("waveform", "length", "label")


def waveform_mixup(key: jax.Array, waveform: jax.Array, length: jax.Array, targets: jax.Array,
                   sample_index: jax.Array, *, prob: float, alpha: float, group_size: int
                   ) -> tuple[jax.Array, jax.Array]:
    """AudioMAE's dataset-level mixup on a batch: (waveform [b, N], targets [b, C]) after mixing.

    Clip i (global index sample_index[i], in the group of `group_size` consecutive rows it belongs to) is mixed with
    probability `prob` with a uniformly chosen other clip j of its group: w_i ← λ w_i + (1 − λ) w_j, the partner cut
    to clip i's valid length (AudioMAE pads or cuts the partner to the first clip's length), and
    y_i ← λ y_i + (1 − λ) y_j, λ ~ Beta(alpha, alpha). Unmixed clips are returned unchanged. `length` is unchanged.
    """
    chex.assert_rank([waveform, length, targets, sample_index], [2, 1, 2, 1])
    b = waveform.shape[0]
    if group_size < 2 or b % group_size:
        raise ValueError(f"waveform_mixup: group_size={group_size} must be ≥ 2 and divide the per-device batch {b} "
                         f"(config.finetune.mix_group)")

    def draw(index: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        k_on, k_lam, k_partner = jax.random.split(jax.random.fold_in(key, index), 3)
        on = jax.random.bernoulli(k_on, prob)
        lam = jax.random.beta(k_lam, alpha, alpha)
        shift = jax.random.randint(k_partner, (), 1, group_size)  # any other member of the group
        return on, lam, shift

    on, lam, shift = jax.vmap(draw)(sample_index)
    rows = jnp.arange(b)
    partner = rows - rows % group_size + (rows % group_size + shift) % group_size
    lam = jnp.where(on, lam, 1.0).astype(jnp.float32)
    valid = jnp.arange(waveform.shape[1])[None, :] < length[:, None]
    mixed = lam[:, None] * waveform + (1.0 - lam[:, None]) * jnp.where(valid, waveform[partner], 0.0)
    mixed_targets = lam[:, None] * targets + (1.0 - lam[:, None]) * targets[partner]
    return mixed.astype(waveform.dtype), mixed_targets


def classification_loss(logits: jax.Array, targets: jax.Array, *, multilabel: bool,
                        label_smoothing: float) -> jax.Array:
    """Per-sample loss [b]: mean over classes of BCE-with-logits (multi-label; the batch mean of it is torch's
    BCEWithLogitsLoss), or CE against (1 − ε) targets + ε / C (timm's LabelSmoothingCrossEntropy for one-hot targets).
    logits, targets: [b, C] float32."""
    chex.assert_equal_shape([logits, targets])
    if multilabel:
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1)
    return optax.softmax_cross_entropy(logits, optax.smooth_labels(targets, label_smoothing))


def _targets(batch: Batch, options: FinetuneOptions) -> jax.Array:
    if options.multi_hot:
        chex.assert_shape(batch["multi_hot"], (batch["waveform"].shape[0], options.num_classes))
        return batch["multi_hot"].astype(jnp.float32)
    return jax.nn.one_hot(batch["label"], options.num_classes, dtype=jnp.float32)  # label −1 → all zeros


def make_finetune_step(encoder: AudioMAEEncoder, head: nn.Module, options: FinetuneOptions) -> Step:
    """The per-device step(state, batch, key) → (state, metrics) for `jit(shard_map(...))` over axis 'data'.

    state.params = {'encoder': ..., 'head': ...}, all trained. batch: device-local rows of `waveform` [b, N] f32,
    `length` [b] i32, `label` [b] i32 and, with options.multi_hot, `multi_hot` [b, C]. key: the run's base key;
    the step folds in state.step. Metrics: loss (global mean), grad_norm and, for single-label sets, accuracy
    (training top-1).
    """
    o = options
    if o.target_length != encoder.target_length:
        raise ValueError(f"FinetuneOptions.target_length={o.target_length} differs from the encoder's "
                         f"{encoder.target_length}")
    grid = (encoder.target_length // encoder.patch_size, encoder.num_mel_bins // encoder.patch_size)
    use_mask = o.mask_t_prob > 0 or o.mask_f_prob > 0
    use_drop = encoder.drop_path_rate > 0

    def encode(params: Any, x: jax.Array, keep: jax.Array | None, keys: jax.Array) -> jax.Array:
        if not use_drop:
            return encoder.apply({"params": params}, x, train=True, keep=keep)[1]

        # Drop path draws one keep/drop per sample from the 'dropout' stream: run the encoder per sample (vmapped;
        # XLA still sees batched matmuls) so each clip's draw comes from its own global-index key.
        def one(x1: jax.Array, keep1: jax.Array | None, k: jax.Array) -> jax.Array:
            keep1 = None if keep1 is None else keep1[None]
            return encoder.apply({"params": params}, x1[None], train=True, keep=keep1, rngs={"dropout": k})[1][0]

        return jax.vmap(one)(x, keep, keys)

    def step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        b = batch["waveform"].shape[0]
        gidx = jax.lax.axis_index(AXIS) * b + jnp.arange(b, dtype=jnp.int32)
        n_global = b * jax.lax.psum(1, AXIS)
        step_key = jax.random.fold_in(key, state.step)
        k_mix, k_aug, k_mask, k_drop = (jax.random.fold_in(step_key, i) for i in range(4))

        targets = _targets(batch, o)
        waveform = batch["waveform"]
        if o.mixup_prob > 0:
            waveform, targets = waveform_mixup(k_mix, waveform, batch["length"], targets, gidx, prob=o.mixup_prob,
                                               alpha=o.mixup_alpha, group_size=o.mix_group or b)
        fbank, n_valid = waveform_to_fbank(waveform, batch["length"])
        x = jax.vmap(lambda i, f, n: augment_view(
            jax.random.fold_in(k_aug, i), f, n, target_length=o.target_length, gain=o.gain, freq_mask=o.freq_mask,
            time_mask=o.time_mask, stats=o.stats, gain_beta=o.gain_beta))(gidx, fbank, n_valid)
        keep = (structured_keep_indices(k_mask, gidx, time_patches=grid[0], freq_patches=grid[1],
                                        mask_t_prob=o.mask_t_prob, mask_f_prob=o.mask_f_prob) if use_mask else None)
        drop_keys = jax.vmap(lambda i: jax.random.fold_in(k_drop, i))(gidx)

        def loss_fn(params: Any) -> tuple[jax.Array, jax.Array]:
            params = device_varying(params)  # the gradients are summed over devices in float32
            emb = encode(params["encoder"], x, keep, drop_keys)
            logits = head.apply({"params": params["head"]}, emb)
            per_sample = classification_loss(logits, targets, multilabel=o.multilabel,
                                             label_smoothing=o.label_smoothing)
            return jax.lax.psum(jnp.sum(per_sample), AXIS) / n_global, logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state = state.apply_trainable_gradients(grads)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        if not o.multilabel:  # training top-1 against the labels (mixup is off for single-label sets)
            hits = jnp.sum(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))
            metrics["accuracy"] = jax.lax.psum(hits, AXIS) / n_global
        return new_state, metrics

    return step
