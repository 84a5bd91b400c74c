"""`load_encoder(path)`: the encoder of a converted AudioMAE directory, an AudioMAE `.pth`, or a training workdir.

    encoder, variables = load_encoder(path)            # (AudioMAEEncoder, {'params': ...})
    tokens, embedding = encoder.apply(variables, fbank)  # fbank [B, T, 128] normalised

A training workdir (stage 1 or 2) is recognised by `config.json` + `checkpoints/`; its encoder's size and pooling
come from `config.json` (`model.size`, `model.pooling`, `model.target_length`, `model.posemb`), the weights from the
latest checkpoint's `params/encoder`.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from uamix_jax.models.posemb import PRETRAIN_LENGTH
from uamix_jax.models.vit import VIT_SIZES, AudioMAEEncoder

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


def is_training_workdir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, CHECKPOINT_DIR)) or os.path.isfile(os.path.join(path, CONFIG_FILE))


def _read_workdir_model(path: str) -> dict[str, Any]:
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{path}: a training workdir needs {CONFIG_FILE} (written by the trainer at start) "
                                f"to know the encoder's size; it is missing")
    try:
        with open(config_path, encoding="utf-8") as f:
            model = json.load(f)["model"]
        fields = {k: model[k] for k in ("size", "target_length", "pooling")}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{config_path}: cannot read model.size / model.target_length / model.pooling "
                         f"({type(err).__name__}: {err}); is this a uamix-jax training config?") from err
    fields["posemb"] = model.get("posemb", "prefix")
    if fields["size"] not in VIT_SIZES:
        raise ValueError(f"{config_path}: model.size {fields['size']!r} is not one of {sorted(VIT_SIZES)}")
    return fields


def _fit(template: Any, loaded: Any, source: str) -> dict[str, Any]:
    """`loaded` as float32 arrays in the structure of `template` (shape structs); errors name every mismatch."""
    want = traverse_util.flatten_dict(template, sep="/")
    got = traverse_util.flatten_dict(loaded, sep="/")
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    bad = [f"{k}: expected {tuple(want[k].shape)}, found {tuple(np.shape(got[k]))}"
           for k in sorted(set(want) & set(got)) if tuple(want[k].shape) != tuple(np.shape(got[k]))]
    if missing or extra or bad:
        raise ValueError(f"{source}: the checkpoint's encoder does not fit the encoder its config.json describes: "
                         f"missing {missing[:6]}, unexpected {extra[:6]}, mis-shaped {bad[:6]}")
    return traverse_util.unflatten_dict({k: jnp.asarray(got[k], want[k].dtype) for k in want}, sep="/")


def _load_workdir(path: str, target_length: int | None, posemb: str, dtype: Any) -> tuple[AudioMAEEncoder, dict]:
    from uamix_jax.train.checkpoint import restore_state_dict  # orbax; only for workdirs

    model = _read_workdir_model(path)
    t = int(target_length or model["target_length"])
    if t == model["target_length"] and posemb != model["posemb"]:
        warnings.warn(f"{path}: trained at T = {t} with the '{model['posemb']}' positional table; posemb="
                      f"'{posemb}' gives its tokens other codes", stacklevel=3)
    encoder = AudioMAEEncoder.from_size(model["size"], target_length=t, pooling=model["pooling"], posemb=posemb,
                                        dtype=dtype)
    try:
        saved = restore_state_dict(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: no finished checkpoint under {CHECKPOINT_DIR}/ to read the encoder "
                                f"from ({err})") from err
    try:
        params = saved["params"]["encoder"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: the latest checkpoint has no params/encoder; it was not written by the "
                         f"uamix-jax trainer") from err
    abstract = jax.eval_shape(encoder.init, jax.random.key(0),
                              jax.ShapeDtypeStruct((1, t, encoder.num_mel_bins), jnp.float32))
    return encoder, {"params": _fit(abstract["params"], params, path)}


def _load_audiomae(path: str, target_length: int | None, posemb: str, dtype: Any) -> tuple[AudioMAEEncoder, dict]:
    from uamix_jax.interop.audiomae import convert_state_dict, encoder_from_info, load_converted
    from uamix_jax.interop.torch_io import load_pth

    if os.path.isdir(path):
        variables, info = load_converted(path)
    else:
        variables, info = convert_state_dict(load_pth(path), source=path)
    t = int(target_length or info["target_length"])
    if t == info["target_length"] != PRETRAIN_LENGTH and posemb != info["checkpoint_posemb"]:
        warnings.warn(f"{path}: this checkpoint was trained at T = {t} with the '{info['checkpoint_posemb']}' "
                      f"positional table; posemb='{posemb}' gives its tokens other codes", stacklevel=3)
    encoder = encoder_from_info(info, target_length=t, posemb=posemb, dtype=dtype)
    return encoder, jax.tree.map(jnp.asarray, variables)


def load_encoder(path: str | os.PathLike, *, target_length: int | None = None, posemb: str = "prefix",
                 dtype: Any = jnp.float32) -> tuple[AudioMAEEncoder, dict]:
    """(encoder, variables) of a converted AudioMAE directory, an AudioMAE `.pth`, or a training workdir.

    `encoder.apply(variables, fbank [B, T, 128])` → (tokens [B, 1 + 8T/16, D], embedding [B, D]).
    target_length: T of the input (None: the checkpoint's own, 1024 for AudioMAE's released weights and
    `model.target_length` of a workdir). posemb: the positional-table policy for T ≠ 1024 ('prefix' keeps the codes
    of pretraining). dtype: compute dtype (parameters stay float32). A random init is not loaded here.
    """
    if path is None or not os.fspath(path):
        raise ValueError("load_encoder needs a path (converted AudioMAE dir, .pth file or training workdir); "
                         "an empty init_from means a random init, which the caller builds itself")
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"encoder path {path} does not exist; pass a converted AudioMAE directory "
                                f"(tools/convert_audiomae.py), an AudioMAE .pth, or a training workdir")
    if os.path.isfile(path):
        return _load_audiomae(path, target_length, posemb, dtype)
    from uamix_jax.interop.audiomae import INFO_FILE

    if os.path.isfile(os.path.join(path, INFO_FILE)):
        return _load_audiomae(path, target_length, posemb, dtype)
    if is_training_workdir(path):
        return _load_workdir(path, target_length, posemb, dtype)
    inside = [d for d in sorted(os.listdir(path))
              if os.path.isdir(os.path.join(path, d)) and is_training_workdir(os.path.join(path, d))]
    hint = f"; it holds training workdirs {inside}: pass one of them" if inside else ""
    raise ValueError(f"{path} is neither a converted AudioMAE directory ({INFO_FILE} + variables/) nor a training "
                     f"workdir ({CONFIG_FILE} + {CHECKPOINT_DIR}/){hint}")


def random_encoder(size: str, *, target_length: int = PRETRAIN_LENGTH, posemb: str = "prefix", seed: int = 0,
                   dtype: Any = jnp.float32) -> tuple[AudioMAEEncoder, dict]:
    """A randomly initialised encoder of a named size (the 'random init' baseline), key = PRNGKey(seed)."""
    encoder = AudioMAEEncoder.from_size(size, target_length=target_length, posemb=posemb, dtype=dtype)
    variables = jax.jit(encoder.init)(jax.random.key(seed), jnp.zeros((1, target_length, encoder.num_mel_bins)))
    return encoder, variables
