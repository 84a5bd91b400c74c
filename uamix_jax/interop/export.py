"""uamix-jax → AudioMAE's PyTorch format: the inverse of `convert_state_dict`, and MAE-CT-style NNCLR heads.

Flax path (under params) → torch key, value (docs/method.md, "Checkpoint conversion", read backwards):

    patch_embed/proj/kernel [p, p, 1, D] (HWIO)  → patch_embed.proj.weight [D, 1, p, p] (OIHW, transpose 3,2,0,1)
    <dense>/kernel [in, out]                     → <dense>.weight [out, in] (transpose; qkv stays fused q | k | v)
    <layernorm>/scale                            → <layernorm>.weight;  biases, cls_token, mask_token as they are
    blocks_i / decoder_blocks_i                  → blocks.i / decoder_blocks.i
    (generated)                                  → pos_embed [1, 1 + n, D]: the table the encoder used
                                                   (`positional_table(D, T, policy=posemb)`); decoder_pos_embed likewise

What is written depends on what the source holds (`export_source`):
- encoder with `norm` (a converted pretrained directory, a stage-1/2 workdir): encoder keys + `norm` — timm's
  `VisionTransformer(img_size=(T, 128), patch_size=16, in_chans=1, num_classes=0, global_pool='avg',
  fc_norm=False)` loads it with strict=True;
- + `params['decoder']` (an MAE pretraining workdir): `decoder_embed`, `mask_token`, `decoder_pos_embed`,
  `decoder_blocks.i.*`, `decoder_norm`, `decoder_pred` (AudioMAE's plain decoder);
- encoder with `fc_norm` + `params['head']` = {kernel, bias} (a fine-tuning workdir): + `fc_norm`, `head` —
  AudioMAE's fine-tuning `VisionTransformer`.
Parts a target lacks (decoder, classifier head) are left out only with `encoder_only`, which lists them.
The NNCLR head of a tuning workdir goes to its own file (`nnclr_head_state_dict`; key names in docs/interop.md).
`save_export` writes a `.pth` (AudioMAE's `{'model': ...}` wrapper) or a `.safetensors` file (the same keys, unwrapped).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from uamix_jax.interop.audiomae import INFO_FILE, load_converted, own_posemb
from uamix_jax.interop.torch_io import CheckpointError
from uamix_jax.interop.workdir import (assign_tree, is_training_workdir, read_workdir_config, restore_state_dict,
                                       workdir_model)
from uamix_jax.models.posemb import positional_table
from uamix_jax.models.vit import VIT_SIZES, AudioMAEEncoder

__all__ = ["Export", "flax_to_torch", "encoder_state_dict", "export_source", "nnclr_head_state_dict",
           "save_export", "check_export", "EXPORT_KEY", "EXPORT_FORMATS"]

EXPORT_KEY = "uamix_jax"  # the metadata entry beside 'model' in a written file (plain JSON values)
_REPEATED = re.compile(r"^(blocks|decoder_blocks)_(\d+)$")


def _torch_name(path: tuple[str, ...]) -> str:
    parts: list[str] = []
    for part in path:
        m = _REPEATED.match(part)
        parts += [m.group(1), m.group(2)] if m else [part]
    if parts[-1] in ("kernel", "scale"):
        parts[-1] = "weight"
    return ".".join(parts)


def _torch_value(path: tuple[str, ...], value: Any, source: str) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if path[-1] != "kernel":
        return np.ascontiguousarray(value)
    if value.ndim == 4:  # conv HWIO → OIHW
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if value.ndim == 2:  # Dense [in, out] → Linear [out, in]
        return np.ascontiguousarray(value.T)
    raise CheckpointError(f"{source}: {'/'.join(path)} is a kernel of rank {value.ndim}; only Dense (2) and patch "
                          f"conv (4) kernels have a PyTorch counterpart")


def flax_to_torch(params: Mapping[str, Any], *, source: str = "<params>") -> dict[str, np.ndarray]:
    """Flax params (nested dict) → {torch key: float32 array in torch layout} by the rules in the module docstring."""
    flat = traverse_util.flatten_dict(dict(params))
    return {_torch_name(path): _torch_value(path, value, source) for path, value in flat.items()}


def encoder_state_dict(params: Mapping[str, Any], encoder: AudioMAEEncoder, *,
                       source: str = "<params>") -> dict[str, np.ndarray]:
    """AudioMAE encoder keys (+ `norm` or `fc_norm`) of Flax encoder params, with `pos_embed` the table `encoder`
    adds (`positional_table(width, target_length, policy=posemb)`, [1, 1 + n, D])."""
    state = flax_to_torch(params, source=source)
    if "pos_embed" in state:
        raise CheckpointError(f"{source}: the encoder params hold a pos_embed; uamix-jax encoders generate it")
    table = positional_table(encoder.width, encoder.target_length, num_mel_bins=encoder.num_mel_bins,
                             patch_size=encoder.patch_size, policy=encoder.posemb)
    state["pos_embed"] = np.array(table[None], np.float32)
    return state


@dataclasses.dataclass
class Export:
    """What `export_source` read and will write: the torch state dict, the Flax encoder it came from, and more."""

    state_dict: dict[str, np.ndarray]
    encoder: AudioMAEEncoder
    encoder_params: dict
    kind: str  # 'converted', 'tune', 'pretrain' or 'finetune'
    target: str  # the PyTorch model the file loads into with strict=True
    left_out: list[str]
    meta: dict[str, Any]
    head_params: dict | None = None  # the fine-tuning classifier {kernel, bias}, when exported
    saved_state: dict | None = None  # the workdir's raw checkpoint (for the NNCLR head)
    config: dict | None = None  # the workdir's config.json


def _natural(key: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _decoder_state_dict(decoder: Mapping[str, Any], encoder: AudioMAEEncoder, source: str) -> dict[str, np.ndarray]:
    state = flax_to_torch(decoder, source=f"{source} params/decoder")
    if "decoder_embed.weight" not in state:
        raise CheckpointError(f"{source}: params/decoder has no decoder_embed/kernel; found "
                              f"{sorted(state, key=_natural)[:8]}")
    width = state["decoder_embed.weight"].shape[0]
    table = positional_table(width, encoder.target_length, num_mel_bins=encoder.num_mel_bins,
                             patch_size=encoder.patch_size, policy=encoder.posemb)
    state["decoder_pos_embed"] = np.array(table[None], np.float32)
    return state


@dataclasses.dataclass
class _Source:
    encoder: AudioMAEEncoder
    params: Any  # the encoder's
    kind: str
    meta: dict[str, Any]
    head: Any = None
    decoder: Any = None
    saved: dict | None = None
    config: dict | None = None


def _read_converted(path: str, encoder_only: bool) -> _Source:
    variables, info = load_converted(path)
    if info["format"] == "finetuned" and "num_classes" in info and not encoder_only:
        raise CheckpointError(
            f"{path}: a converted fine-tuned checkpoint holds fc_norm but no classifier head (the converter drops "
            f"head.*), so AudioMAE's fine-tuning VisionTransformer cannot load it; pass --encoder-only "
            f"(encoder_only=True) to write the encoder with fc_norm (timm: fc_norm=True, num_classes=0)")
    encoder = AudioMAEEncoder(**{k: info[k] for k in ("width", "depth", "num_heads", "mlp_dim", "patch_size",
                                                     "num_mel_bins", "target_length", "pooling")},
                              posemb=own_posemb(info["target_length"], info["checkpoint_posemb"]))
    return _Source(encoder, variables["params"], "converted", {"source_file": info.get("source_file", "")})


def _task_of(params: Mapping[str, Any], path: str) -> str:
    head = params.get("head")
    if params.get("decoder") is not None:
        return "pretrain"
    if isinstance(head, Mapping) and "kernel" in head:
        return "finetune"
    if isinstance(head, Mapping) and "projector" in head:
        return "tune"
    raise CheckpointError(f"{path}: cannot tell the task from params {sorted(params)}: expected 'decoder' "
                          f"(pretraining), a 'head' with kernel/bias (fine-tuning) or with projector/predictor "
                          f"(tuning)")


def _read_workdir(path: str, step: int | None) -> _Source:
    model = workdir_model(path)
    saved = restore_state_dict(path, step)
    params = saved.get("params")
    if not isinstance(params, Mapping) or "encoder" not in params:
        raise CheckpointError(f"{path}: the checkpoint has no params/encoder; it was not written by the uamix-jax "
                              f"trainer")
    pooling = "fc_norm" if "fc_norm" in params["encoder"] else "norm_mean"
    if pooling != model["pooling"]:
        raise CheckpointError(f"{path}: config.json says model.pooling={model['pooling']!r} but the encoder params "
                              f"hold {'fc_norm' if pooling == 'fc_norm' else 'norm'}")
    encoder = AudioMAEEncoder.from_size(model["size"], target_length=model["target_length"], pooling=pooling,
                                        posemb=model["posemb"])
    return _Source(encoder, params["encoder"], _task_of(params, path), {"step": int(np.asarray(saved.get("step", -1)))},
                   head=params.get("head"), decoder=params.get("decoder"), saved=saved,
                   config=read_workdir_config(path))


def export_source(path: str | os.PathLike, *, encoder_only: bool = False, step: int | None = None) -> Export:
    """Reads a converted AudioMAE directory or a training workdir (tuning, pretraining, fine-tuning) and builds the
    AudioMAE-format state dict its contents call for (module docstring). Raises CheckpointError naming the path."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(os.path.join(path, INFO_FILE)):
        src = _read_converted(path, encoder_only)
    elif is_training_workdir(path):
        src = _read_workdir(path, step)
    else:
        raise CheckpointError(f"{path} is neither a converted AudioMAE directory ({INFO_FILE}) nor a training workdir "
                              f"(config.json + a finished step under checkpoints/)")
    encoder = src.encoder
    abstract = jax.eval_shape(encoder.init, jax.random.key(0),
                              jax.ShapeDtypeStruct((1, encoder.target_length, encoder.num_mel_bins), jnp.float32))
    params = jax.tree.map(np.asarray, assign_tree(abstract["params"], src.params, "encoder", path,
                                                  hint="config.json's model block must describe the encoder saved"))
    state = encoder_state_dict(params, encoder, source=path)
    head_params = None
    if src.kind == "pretrain":
        extra = _decoder_state_dict(src.decoder, encoder, path)
        full_target = "AudioMAE MaskedAutoencoderViT (plain decoder; torch_mae.PlainMaskedAutoencoderViT)"
    elif src.kind == "finetune":
        extra = {"head.weight": np.ascontiguousarray(np.asarray(src.head["kernel"], np.float32).T),
                 "head.bias": np.asarray(src.head["bias"], np.float32)}
        head_params = None if encoder_only else jax.tree.map(np.asarray, dict(src.head))
        full_target = f"AudioMAE fine-tuning VisionTransformer(num_classes={extra['head.bias'].shape[0]})"
    else:
        extra = {}
    left_out = sorted(extra, key=_natural) if encoder_only else []
    if extra and not encoder_only:
        state.update(extra)
        target = full_target
    else:
        target = (f"timm VisionTransformer(img_size=({encoder.target_length}, {encoder.num_mel_bins}), "
                  f"patch_size={encoder.patch_size}, in_chans=1, embed_dim={encoder.width}, depth={encoder.depth}, "
                  f"num_heads={encoder.num_heads}, num_classes=0, global_pool='avg', "
                  f"fc_norm={encoder.pooling == 'fc_norm'})")
    size = next((n for n, s in VIT_SIZES.items()
                 if s == (encoder.width, encoder.depth, encoder.num_heads, encoder.mlp_dim)), "custom")
    from uamix_jax import __version__

    meta = {"source": path, "kind": src.kind, "model_size": size, "width": encoder.width, "depth": encoder.depth,
            "num_heads": encoder.num_heads, "mlp_dim": encoder.mlp_dim, "patch_size": encoder.patch_size,
            "num_mel_bins": encoder.num_mel_bins, "target_length": encoder.target_length, "posemb": encoder.posemb,
            "pooling": encoder.pooling, "left_out": left_out, "exported_with": f"uamix-jax {__version__}",
            **src.meta}
    state = {k: state[k] for k in sorted(state, key=_natural)}
    return Export(state_dict=state, encoder=encoder, encoder_params=params, kind=src.kind, target=target,
                  left_out=left_out, meta=meta, head_params=head_params, saved_state=src.saved, config=src.config)


def _bn(prefix: str, params: Mapping[str, Any] | None, stats: Mapping[str, Any], n: int,
        tracked: int) -> dict[str, np.ndarray]:
    """PyTorch BatchNorm1d entries: running_var = Flax's biased running variance · n/(n − 1) (models/head.py)."""
    out = {}
    if params is not None:
        out[f"{prefix}.weight"] = np.asarray(params["scale"], np.float32)
        out[f"{prefix}.bias"] = np.asarray(params["bias"], np.float32)
    out[f"{prefix}.running_mean"] = np.asarray(stats["mean"], np.float32)
    out[f"{prefix}.running_var"] = (np.asarray(stats["var"], np.float64) * (n / (n - 1))).astype(np.float32)
    out[f"{prefix}.num_batches_tracked"] = np.asarray(tracked, np.int64)
    return out


def _sequential(prefix: str, params: Mapping[str, Any], stats: Mapping[str, Any], n_linear: int, last_bn: bool,
                n: int, tracked: int) -> dict[str, np.ndarray]:
    """linear{i} → `prefix`.{3i}.weight, bn{i} → `prefix`.{3i+1}.* (Linear, BN, ReLU per hidden layer)."""
    out: dict[str, np.ndarray] = {}
    for i in range(n_linear):
        out[f"{prefix}.{3 * i}.weight"] = np.ascontiguousarray(np.asarray(params[f"linear{i}"]["kernel"],
                                                                          np.float32).T)
        if i < n_linear - 1 or last_bn:
            out.update(_bn(f"{prefix}.{3 * i + 1}", params.get(f"bn{i}"), stats[f"bn{i}"], n, tracked))
    return out


def nnclr_head_state_dict(saved: Mapping[str, Any], *, global_batch: int) -> dict[str, np.ndarray]:
    """MAE-CT-style PyTorch state dict of a tuning checkpoint's NNCLR head (keys: `NNCLRHeadTorch`, docs/interop.md).

    projector.{0,3,6}.weight, projector.{1,4,7}.{weight,bias,running_mean,running_var,num_batches_tracked},
    predictor.{0,3}.weight, predictor.1.*, and target_projector.* (stage 2's EMA projector) when the state has one.
    running_var = Flax var · n/(n − 1) with n = `global_batch` (the per-view global batch); num_batches_tracked =
    2 · step (the head runs once per view per step; steps of an earlier stage are not counted).
    """
    if global_batch < 2:
        raise ValueError(f"global_batch={global_batch}: BatchNorm's unbiased variance needs n >= 2")
    params = saved["params"]["head"]
    stats = saved["batch_stats"]
    tracked = 2 * int(np.asarray(saved.get("step", 0)))
    out = _sequential("projector", params["projector"], stats["projector"], 3, True, global_batch, tracked)
    out.update(_sequential("predictor", params["predictor"], stats["predictor"], 2, False, global_batch, tracked))
    ema_params, ema_stats = saved.get("ema_params"), saved.get("ema_batch_stats")
    if isinstance(saved.get("ema"), Mapping):  # a TrainState that keeps the EMA projector under one field
        ema_params, ema_stats = saved["ema"].get("params"), saved["ema"].get("batch_stats")
    if ema_params:
        ema_stats = ema_stats.get("projector", ema_stats)
        out.update(_sequential("target_projector", ema_params, ema_stats, 3, True, global_batch, tracked))
    return out


EXPORT_FORMATS = ("pth", "safetensors")


def save_export(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray], meta: Mapping[str, Any], *,
                file_format: str = "pth") -> str:
    """Writes the export. 'pth': torch.save({'model': state_dict (torch tensors), 'uamix_jax': meta}), AudioMAE's
    'model' wrapper; 'safetensors': the same keys and arrays at the top level of a `.safetensors` file, `meta` as
    JSON in its header (`{'format': 'pt', 'uamix_jax': json}`). Returns the absolute path."""
    if file_format not in EXPORT_FORMATS:
        raise ValueError(f"save_export: file_format must be one of {EXPORT_FORMATS}, got {file_format!r}")
    if file_format == "safetensors":
        from uamix_jax.interop.weights_io import save_safetensors

        return save_safetensors(path, state_dict, {EXPORT_KEY: json.dumps(dict(meta), default=str)})
    import torch

    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}  # a writable copy
    torch.save({"model": tensors, EXPORT_KEY: dict(meta)}, path)
    return path


def check_export(path: str | os.PathLike, export: Export, *, batch: int = 2, seed: int = 0) -> dict[str, float]:
    """Max |Δ| between the PyTorch reference loaded (strictly) from the written file and the Flax encoder.

    Same random input [batch, T, F] (0.5·N(0, 1), the spread of normalised fbanks); Flax at matmul precision
    'highest'. Returns {'tokens', 'embedding'} (+ 'logits' for a fine-tuning head), each a max |Δ|.
    """
    import torch

    from uamix_jax.interop.audiomae import convert_state_dict
    from uamix_jax.interop.torch_audiomae import reference_from_state_dict, timm_reference
    from uamix_jax.interop.weights_io import read_state_dict

    path = os.fspath(path)
    state, _ = read_state_dict(path)
    _, info = convert_state_dict(state, num_heads=export.encoder.num_heads, source=path)
    if "head.weight" in state:  # AudioMAE's fine-tuning VisionTransformer
        model = reference_from_state_dict(state, info)
    else:  # timm's key set; decoder keys (pretraining) are not part of the encoder's forward
        model = timm_reference(state, info)
    e = export.encoder
    x = (0.5 * np.random.default_rng(seed).standard_normal((batch, e.target_length, e.num_mel_bins))).astype(
        np.float32)
    with torch.no_grad():
        ref_tokens, ref_emb = (t.numpy() for t in model(torch.from_numpy(x)))
        ref_logits = model.head(torch.from_numpy(ref_emb)).numpy() if "head.weight" in state else None
    with jax.default_matmul_precision("highest"):
        tokens, emb = (np.asarray(a) for a in jax.jit(e.apply)({"params": export.encoder_params}, jnp.asarray(x)))
    out = {"tokens": float(np.abs(tokens - ref_tokens).max()), "embedding": float(np.abs(emb - ref_emb).max())}
    if ref_logits is not None and export.head_params is not None:
        logits = emb.astype(np.float64) @ np.asarray(export.head_params["kernel"], np.float64) + np.asarray(
            export.head_params["bias"], np.float64)
        out["logits"] = float(np.abs(logits - ref_logits).max())
    return out
