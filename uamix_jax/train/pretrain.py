"""AudioMAE's masked-autoencoder pretraining (reference/audiomae.md "Pretraining"): the per-device step and the task.

One step on a global batch of B clips, per device over axis 'data':

    waveform → Kaldi fbank → crop / pad to T frames (a random crop of longer clips), optional gain, normalise
    → patchify (target [B, N, 256]) → unstructured masking, keep int(N (1 − 0.8)) tokens per clip
    → encoder on the kept tokens + cls → plain decoder on all N positions → mae_loss (norm_pix, masked patches only)
    → AdamW β = (0.9, 0.95), wd 1e-4 on matrices, warmup + cosine.

Every draw (crop, gain, mask) is keyed by fold_in(step key, the clip's index in the global batch), never by device,
so the same global batch gives the same step on 1 or 8 devices. The loss is the global mean over masked patches
(psum), so the gradients of the replicated parameters arrive already reduced (see uamix_jax/train/step.py).

Deviations from AudioMAE, all config: the decoder is the plain one (`decoder_mode=0`; the released checkpoints used
the Swin decoder); clips longer than T are cropped at a random start (AudioMAE takes the first T frames); the gain
is U(0.5, 1.5) (AudioMAE's `roll_mag_aug` draws Beta(10, 10) + 0.5 and never rolls, see reference §4).

`pretrain(config, workdir)` runs it on the shared trainer; the workdir's params are {'encoder', 'decoder'}, its
`config.json` carries the `model` block, so it loads with `load_encoder(workdir)` and as stage 1's `init_from`.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from uamix_jax.audio.augment import augment_view
from uamix_jax.audio.features import resolve_stats, waveform_to_fbank
from uamix_jax.models.mae import MAEDecoder, num_keep, patchify, random_masking
from uamix_jax.models.vit import AudioMAEEncoder
from uamix_jax.objectives.mae import mae_loss
from uamix_jax.train import optim
from uamix_jax.train.build import build_encoder
from uamix_jax.train.state import TrainState
from uamix_jax.train.step import AXIS

Batch = dict[str, jax.Array]
Step = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]
PRETRAIN_LABEL = "mae"  # the one optimizer group: everything trains
BATCH_KEYS = ("waveform", "length")


@dataclasses.dataclass(frozen=True)
class PretrainOptions:
    """Static (hashable) options of the pretraining step, read once from the config."""

    target_length: int
    stats: tuple[float, float]
    mask_ratio: float = 0.8
    norm_pix_loss: bool = True
    gain: tuple[float, float] | None = (0.5, 1.5)


def build_mae(config: ml_collections.ConfigDict) -> tuple[AudioMAEEncoder, MAEDecoder]:
    """The encoder (config.model; pooling 'norm_mean', AudioMAE's pretraining `norm`) and decoder (config.decoder)."""
    d = config.decoder
    encoder = build_encoder(config, pooling="norm_mean")
    decoder = MAEDecoder(width=d.width, depth=d.depth, num_heads=d.num_heads, mlp_dim=d.mlp_dim,
                         patch_size=encoder.patch_size, num_mel_bins=encoder.num_mel_bins,
                         target_length=encoder.target_length, posemb=encoder.posemb, dtype=encoder.dtype,
                         remat=encoder.remat, attention=encoder.attention)
    return encoder, decoder


def pretrain_options(config: ml_collections.ConfigDict) -> PretrainOptions:
    a = config.augment
    return PretrainOptions(
        target_length=config.model.target_length, stats=resolve_stats(config.data.stats),
        mask_ratio=config.mae.mask_ratio, norm_pix_loss=config.mae.norm_pix_loss,
        gain=(a.gain_min, a.gain_max) if a.gain_max > 0 else None)


def init_params(encoder: AudioMAEEncoder, decoder: MAEDecoder, key: jax.Array, mask_ratio: float) -> dict:
    """Fresh {'encoder', 'decoder'} params (MAE's initialisation: xavier linears, N(0, .02²) cls and mask token)."""
    k_enc, k_dec = jax.random.split(key)
    n_keep = num_keep(encoder.num_patches, mask_ratio)
    x = jnp.zeros((1, encoder.target_length, encoder.num_mel_bins), jnp.float32)
    tokens = jnp.zeros((1, 1 + n_keep, encoder.width), jnp.float32)
    keep = jnp.zeros((1, n_keep), jnp.int32)
    return {"encoder": jax.jit(encoder.init)(k_enc, x)["params"],
            "decoder": jax.jit(decoder.init)(k_dec, tokens, keep)["params"]}


def create_state(config: ml_collections.ConfigDict, encoder: AudioMAEEncoder, decoder: MAEDecoder, total_steps: int,
                 key: jax.Array) -> tuple[TrainState, Callable[[Any], Any]]:
    """(fresh TrainState, lr schedule): AdamW(b1, b2, wd on matrices, `optim.decay_mask`) · warmup + cosine.

    MAE's pretraining decays every parameter of rank ≥ 2 (cls and mask tokens included: timm 0.3.2's
    `add_weight_decay` skips only 1-D parameters and biases), which is what `decay_mask` does.
    """
    o = config.optim
    params = init_params(encoder, decoder, key, config.mae.mask_ratio)
    labels = optim.label_params(params, [(r"(encoder|decoder)/.*", PRETRAIN_LABEL)])
    schedule = optim.warmup_cosine(o.lr, total_steps, int(round(o.warmup_fraction * total_steps)))
    tx = optim.make_optimizer(params, labels=labels, groups={PRETRAIN_LABEL: optim.Group(1.0, o.weight_decay)},
                              schedule=schedule, b1=o.b1, b2=o.b2, eps=o.eps)
    return TrainState.create(apply_fn=None, params=params, tx=tx), schedule


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
            time_mask=0, stats=o.stats))(gidx, fbank, n_valid)
        target = patchify(x, encoder.patch_size)
        keep, mask = random_masking(k_mask, gidx, encoder.num_patches, n_keep)

        def loss_fn(params: Any) -> jax.Array:
            tokens, _ = encoder.apply({"params": params["encoder"]}, x, keep=keep)
            pred = decoder.apply({"params": params["decoder"]}, tokens, keep)
            return mae_loss(pred, target, mask, norm_pix=o.norm_pix_loss, axis_name=AXIS)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        return state.apply_gradients(grads=grads), {"loss": loss, "grad_norm": grad_norm}

    return step


def _demo_data(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """With data.synthetic and no data.root: the demo's synthetic tones in <workdir>/data (made once) as the data."""
    if config.data.root or not config.data.get("synthetic", False):
        return config
    from uamix_jax.data.demo import ensure_demo_dataset

    root = ensure_demo_dataset(os.path.join(workdir, "data"), seconds=config.data.clip_seconds, seed=config.seed)
    config = copy.deepcopy(config)
    with config.unlocked():
        config.data.root = root
    return config


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """MAE pretraining of config.model's encoder with config.decoder in `workdir` (resumes from its checkpoints)."""
    # The shared trainer (data pipeline, checkpoints, logs) is needed only here, not by the step or benchmarks.
    from uamix_jax.data.bad_audio import check_manifest
    from uamix_jax.train.loop import TrainTask, load_manifest, plan_training, run_training

    workdir = os.path.abspath(workdir)
    config = _demo_data(config, workdir)
    if not config.data.root and config.data.name != "tfds":  # TFDS reads its default data_dir
        raise ValueError("config.data.root is empty: point it at a folder of audio (data.name='unlabelled' reads "
                         "every audio file below it), or use configs/pretrain_mae.py:demo for synthetic clips")
    manifest = load_manifest(config.data)
    check_manifest(manifest)
    plan = plan_training(config, manifest)
    encoder, decoder = build_mae(config)
    state, schedule = create_state(config, encoder, decoder, plan.total_steps, jax.random.key(config.seed))
    n_params = {k: optim.count_params(v) for k, v in state.params.items()}
    logging.info("MAE pretraining: encoder %s, decoder %s parameters; %d of %d patch tokens visible per clip",
                 f"{n_params['encoder']:,}", f"{n_params['decoder']:,}",
                 num_keep(encoder.num_patches, config.mae.mask_ratio), encoder.num_patches)
    task = TrainTask(
        name="MAE pretraining", state=state, schedule=schedule, batch_keys=BATCH_KEYS, postfix=("loss",),
        step=make_pretrain_step(encoder, decoder, pretrain_options(config)),
        derived=dict(encoder_params=n_params["encoder"], decoder_params=n_params["decoder"],
                     visible_tokens=num_keep(encoder.num_patches, config.mae.mask_ratio),
                     num_patches=encoder.num_patches))
    return run_training(config, workdir, plan, task)
