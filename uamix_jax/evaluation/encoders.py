"""`load_encoder(path)`: the encoder of a converted AudioMAE directory, an AudioMAE/timm weights file (`.pth`, `.pt`,
`.bin`, `.safetensors`), an `hf-hub:ORG/NAME[@REVISION]` name, or a training workdir.

    encoder, variables = load_encoder(path)            # (AudioMAEEncoder, {'params': ...})
    tokens, embedding = encoder.apply(variables, fbank)  # fbank [B, T, 128] normalised

By default the encoder is the one the checkpoint was trained with: an AudioMAE file's own T and positional table
(`uamix_jax.interop.audiomae.load_audiomae`), a workdir's `config.json` model block (`model.size`, `model.pooling`,
`model.target_length`, `model.posemb`) with the weights of its latest finished checkpoint's `params/encoder`. A
training workdir of any task (tuning, pretraining, fine-tuning) is recognised by `config.json` + a finished step
under `checkpoints/` (`uamix_jax.interop.workdir`).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from uamix_jax.interop.workdir import (CHECKPOINT_DIR, CONFIG_FILE, assign_tree, is_training_workdir,
                                       restore_state_dict, workdir_model, workdir_problem)
from uamix_jax.models.posemb import PRETRAIN_LENGTH
from uamix_jax.models.vit import AudioMAEEncoder

__all__ = ["load_encoder", "random_encoder", "encoder_from", "LoadedEncoder", "ACCEPTED"]

ACCEPTED = ("a converted AudioMAE directory (tools/convert_audiomae.py), an AudioMAE or timm weights file (.pth, .pt, "
            ".bin, .safetensors), hf-hub:ORG/NAME[@REVISION], or a training workdir")


def _load_workdir(path: str, target_length: int | None, posemb: str | None, dtype: Any,
                  attention: str) -> tuple[AudioMAEEncoder, dict]:
    from uamix_jax.interop.audiomae import resolve_input

    model = workdir_model(path)
    t, policy = resolve_input(model["target_length"], model["posemb"], target_length, posemb, path, stacklevel=4)
    encoder = AudioMAEEncoder.from_size(model["size"], target_length=t, pooling=model["pooling"], posemb=policy,
                                        dtype=dtype, attention=attention)
    saved = restore_state_dict(path)
    try:
        params = saved["params"]["encoder"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: the latest checkpoint has no params/encoder; it was not written by the "
                         f"uamix-jax trainer") from err
    abstract = jax.eval_shape(encoder.init, jax.random.key(0),
                              jax.ShapeDtypeStruct((1, t, encoder.num_mel_bins), jnp.float32))
    hint = f"Its {CONFIG_FILE} model block (size, pooling) must describe the encoder the checkpoint holds."
    return encoder, {"params": assign_tree(abstract["params"], params, "checkpoint's encoder", path, hint=hint)}


def load_encoder(path: str | os.PathLike, *, target_length: int | None = None, posemb: str | None = None,
                 dtype: Any = jnp.float32, attention: str = "auto") -> tuple[AudioMAEEncoder, dict]:
    """(encoder, variables) of a converted AudioMAE directory, a weights file (`.pth`/`.pt`/`.bin`/`.safetensors`),
    an `hf-hub:ORG/NAME[@REVISION]` name (`uamix_jax.interop.weights_io`), or a training workdir.

    `encoder.apply(variables, fbank [B, T, 128])` → (tokens [B, 1 + 8T/16, D], embedding [B, D]).
    target_length / posemb: None (default) builds the encoder the checkpoint was trained with (its own T and
    positional table); given, they override (a different table at the checkpoint's own T warns). dtype: compute
    dtype (parameters stay float32). attention: `AudioMAEEncoder.attention`. A random init is not loaded here.
    """
    if path is None or not os.fspath(path):
        raise ValueError(f"load_encoder needs a path ({ACCEPTED}); an empty init_from means a random init, which "
                         f"the caller builds itself")
    from uamix_jax.interop.audiomae import INFO_FILE, load_audiomae
    from uamix_jax.interop.weights_io import is_hub_name

    if is_hub_name(os.fspath(path)):
        return load_audiomae(os.fspath(path), target_length=target_length, posemb=posemb, dtype=dtype,
                             attention=attention)
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"encoder path {path} does not exist; pass {ACCEPTED}")
    if os.path.isfile(path) or os.path.isfile(os.path.join(path, INFO_FILE)):
        return load_audiomae(path, target_length=target_length, posemb=posemb, dtype=dtype, attention=attention)
    if is_training_workdir(path):
        return _load_workdir(path, target_length, posemb, dtype, attention)
    if os.path.isfile(os.path.join(path, CONFIG_FILE)) or os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
        raise FileNotFoundError(f"{path}: not a usable training workdir: {workdir_problem(path)}")
    inside = [d for d in sorted(os.listdir(path)) if is_training_workdir(os.path.join(path, d))]
    hint = f"; it holds training workdirs {inside}: pass one of them" if inside else ""
    raise ValueError(f"{path} is neither a converted AudioMAE directory ({INFO_FILE} + variables/) nor a training "
                     f"workdir ({CONFIG_FILE} + a finished step under {CHECKPOINT_DIR}/){hint}")


def random_encoder(size: str, *, target_length: int = PRETRAIN_LENGTH, posemb: str = "prefix", seed: int = 0,
                   dtype: Any = jnp.float32, attention: str = "auto", pooling: str = "norm_mean"
                   ) -> tuple[AudioMAEEncoder, dict]:
    """A randomly initialised encoder of a named size (the 'random init' baseline), key = PRNGKey(seed)."""
    encoder = AudioMAEEncoder.from_size(size, target_length=target_length, posemb=posemb, dtype=dtype,
                                        attention=attention, pooling=pooling)
    variables = jax.jit(encoder.init)(jax.random.key(seed), jnp.zeros((1, target_length, encoder.num_mel_bins)))
    return encoder, variables


@dataclasses.dataclass(frozen=True)
class LoadedEncoder:
    """An encoder, its variables and a description for result records (a path, or random:<size>:seed<seed>)."""

    encoder: AudioMAEEncoder
    variables: dict
    description: str


def encoder_from(init_from: str, model: Mapping[str, Any], *, dtype: Any = jnp.float32, seed: int = 0
                 ) -> LoadedEncoder:
    """The encoder of `init_from` (anything `load_encoder` reads), or with '' a random init of model.size.

    model: a config's `model` block. target_length 0 / posemb '' mean the checkpoint's own (what it was trained
    with; for a random init, AudioMAE's 1024 frames and the 'prefix' table); otherwise they override. The few-shot
    command, the linear probe and the demo take their encoders here.
    """
    target_length = int(model.get("target_length", 0)) or None
    posemb = model.get("posemb", "") or None
    attention = model.get("attention", "auto")
    if init_from:
        encoder, variables = load_encoder(init_from, target_length=target_length, posemb=posemb, dtype=dtype,
                                          attention=attention)
        described = init_from if init_from.startswith("hf-hub:") else os.path.abspath(init_from)
        return LoadedEncoder(encoder, variables, described)
    encoder, variables = random_encoder(model["size"], target_length=target_length or PRETRAIN_LENGTH,
                                        posemb=posemb or "prefix", seed=seed, dtype=dtype, attention=attention,
                                        pooling=model.get("pooling", "norm_mean"))
    return LoadedEncoder(encoder, variables, f"random:{model['size']}:seed{seed}")
