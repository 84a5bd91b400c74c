"""`pretrain(config, workdir)`: AudioMAE's masked-autoencoder pretraining (docs/method.md, "MAE pretraining") on the
shared trainer.

    python -m uamix_jax.main --config=configs/pretrain_mae.py --workdir=W0 --config.data.root=/data/my_audio

`pretrain_task(config, plan)` builds the encoder (config.model, pooling 'norm_mean': AudioMAE's pretraining `norm`)
and AudioMAE's plain decoder (config.decoder), a fresh state (MAE's initialisation), one optimizer group (everything
trains; AdamW with decay on every parameter of rank ≥ 2) and the per-device step (`train.pretrain_step`). The
workdir's params are {'encoder', 'decoder'}, its `config.json` carries the `model` block, so it loads with
`load_encoder(workdir)` and as stage 1's `init_from`. With fewshot.every > 0 the encoder's few-shot accuracy is logged
during pretraining (`evaluation.periodic`).

Deviations from AudioMAE, all config: the decoder is the plain one (`decoder_mode=0`; the released checkpoints used
the Swin decoder); clips longer than T are cropped at a random start (AudioMAE takes the first T frames).
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from uamix_jax.audio.features import resolve_stats
from uamix_jax.data.bad_audio import check_manifest
from uamix_jax.data.layouts import read_configured_dataset
from uamix_jax.evaluation.periodic import periodic_fewshot
from uamix_jax.models.mae import MAEDecoder, num_keep
from uamix_jax.models.vit import AudioMAEEncoder
from uamix_jax.train import optim
from uamix_jax.train.loop import TrainingPlan, TrainTask, plan_training, run_training
from uamix_jax.train.pretrain_step import PretrainOptions, make_pretrain_step
from uamix_jax.train.state import StateInit, TrainState, create_state

PRETRAIN_LABEL = "mae"  # the one optimizer group: everything trains
BATCH_KEYS = ("waveform", "length")


def build_mae(config: ml_collections.ConfigDict) -> tuple[AudioMAEEncoder, MAEDecoder]:
    """The encoder (config.model; pooling 'norm_mean', AudioMAE's pretraining `norm`) and decoder (config.decoder)."""
    d = config.decoder
    encoder = AudioMAEEncoder.from_config(config.model, dtype=config.dtype, pooling="norm_mean")
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
        gain=(a.gain_min, a.gain_max) if a.gain_max > 0 else None, gain_beta=a.gain_beta)


def pretrain_groups(config: ml_collections.ConfigDict) -> optim.Groups:
    """One group: MAE's pretraining decays every parameter of rank ≥ 2 (cls and mask tokens included: timm 0.3.2's
    `add_weight_decay` skips only 1-D parameters and biases), which is what `optim.decay_mask` does."""
    return optim.Groups(((r"(encoder|decoder)/.*", PRETRAIN_LABEL),),
                        {PRETRAIN_LABEL: optim.Group(1.0, config.optim.weight_decay)})


def pretrain_init(encoder: AudioMAEEncoder, decoder: MAEDecoder, mask_ratio: float) -> StateInit:
    """key → {'params': {'encoder', 'decoder'}} (MAE's initialisation: xavier linears, N(0, .02²) cls, mask token)."""
    n_keep = num_keep(encoder.num_patches, mask_ratio)

    def init(key: jax.Array) -> dict[str, Any]:
        k_enc, k_dec = jax.random.split(key)
        x = jnp.zeros((1, encoder.target_length, encoder.num_mel_bins), jnp.float32)
        tokens = jnp.zeros((1, 1 + n_keep, encoder.width), jnp.float32)
        keep = jnp.zeros((1, n_keep), jnp.int32)
        return {"params": {"encoder": encoder.init(k_enc, x)["params"],
                           "decoder": decoder.init(k_dec, tokens, keep)["params"]}}

    return init


def pretrain_task(config: ml_collections.ConfigDict, plan: TrainingPlan, *, abstract: bool = False,
                  workdir: str | None = None) -> TrainTask:
    """The pretraining task for the shared loop; abstract=True: shapes only (no evaluation)."""
    encoder, decoder = build_mae(config)
    state, _ = create_state(config, pretrain_init(encoder, decoder, config.mae.mask_ratio), pretrain_groups(config),
                            plan.total_steps, jax.random.key(config.seed), abstract=abstract)
    step = make_pretrain_step(encoder, decoder, pretrain_options(config))
    if abstract:
        return TrainTask(state=state, step=step, batch_keys=BATCH_KEYS)
    logging.info("MAE pretraining: %d of %d patch tokens visible per clip",
                 num_keep(encoder.num_patches, config.mae.mask_ratio), encoder.num_patches)
    evaluate, every = periodic_fewshot(config, encoder, workdir)
    return TrainTask(state=state, step=step, batch_keys=BATCH_KEYS, evaluate=evaluate, eval_every=every)


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """MAE pretraining of config.model's encoder with config.decoder in `workdir` (resumes from its checkpoints)."""
    workdir = os.path.abspath(workdir)
    if not config.data.root and config.data.name != "tfds" and not config.data.synthetic:
        raise ValueError("config.data.root is empty: point it at a folder of audio (data.name='unlabelled' reads "
                         "every audio file below it), or use configs/pretrain_mae.py:demo for synthetic clips")
    manifest = read_configured_dataset(config.data, workdir=workdir, seed=config.seed)
    check_manifest(manifest)
    plan = plan_training(config, len(manifest))
    return run_training(config, workdir, manifest, plan, pretrain_task(config, plan, workdir=workdir))
