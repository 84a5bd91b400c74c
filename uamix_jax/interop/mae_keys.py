"""AudioMAE's plain-decoder keys (decoder_mode=0) → `MAEDecoder` params, and a whole pretraining state dict → Flax.

torch key → Flax path under params['decoder'] (the inverse of `uamix_jax.interop.export.flax_to_torch`):

    decoder_embed.weight [Dd, D] / .bias             → decoder_embed/kernel [D, Dd] (transpose) / bias
    mask_token [1, 1, Dd]                            → mask_token
    decoder_blocks.i.{norm1,norm2}.weight / .bias    → decoder_blocks_i/{norm1,norm2}/scale / bias
    decoder_blocks.i.{attn.qkv,attn.proj,mlp.fc1,mlp.fc2}.weight / .bias
                                                     → decoder_blocks_i/{attn/qkv,...}/kernel (transpose) / bias
    decoder_norm.weight / .bias                      → decoder_norm/scale / bias
    decoder_pred.weight [p², Dd] / .bias             → decoder_pred/kernel [Dd, p²] (transpose) / bias
    decoder_pos_embed [1, 1 + N, Dd]                 → checked against the generated table, not stored

The encoder half goes through `uamix_jax.interop.audiomae.convert_state_dict` (pretrained format), which drops
these keys. AudioMAE's released `pretrained.pth` has the Swin decoder (decoder_mode=1: `attn.tau`, `meta_mlp`); that
is not this decoder, and `decoder_params_from_state_dict` says so.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from uamix_jax.interop.audiomae import POS_EMBED_ATOL, convert_state_dict, torch_tensor_maps
from uamix_jax.interop.torch_io import CheckpointError
from uamix_jax.models.posemb import positional_table

__all__ = ["decoder_params_from_state_dict", "mae_params_from_state_dict", "decoder_dims"]

_DECODER_BLOCK = re.compile(r"^decoder_blocks\.(\d+)\.(.+)$")
_BLOCK_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
_BLOCK_NORMS = ("norm1", "norm2")
_SWIN_ONLY = ("attn.tau", "attn.meta_mlp")


def decoder_dims(state: Mapping[str, Any]) -> dict[str, int]:
    """width, depth and mlp_dim of the plain decoder in `state` (the head count cannot be read from shapes)."""
    width = int(np.shape(state["decoder_embed.weight"])[0])
    blocks = {int(m.group(1)) for k in state if (m := _DECODER_BLOCK.match(k))}
    depth = max(blocks) + 1 if blocks else 0
    mlp_dim = int(np.shape(state["decoder_blocks.0.mlp.fc1.weight"])[0]) if depth else 4 * width
    return dict(width=width, depth=depth, mlp_dim=mlp_dim)


def decoder_params_from_state_dict(
    state_dict: Mapping[str, Any], *, target_length: int, posemb: str, num_mel_bins: int = 128,
    patch_size: int = 16, source: str = "<state dict>",
) -> dict[str, Any]:
    """The `MAEDecoder` params (numpy float32) of the decoder keys in an AudioMAE pretraining state dict.

    `target_length` / `posemb` / `num_mel_bins` / `patch_size` describe the grid: `decoder_pos_embed`, when present,
    must equal the table built on it (within POS_EMBED_ATOL). Raises CheckpointError naming missing, unknown or
    mis-shaped keys.
    """
    state = {str(k): np.asarray(v) for k, v in state_dict.items()
             if str(k).startswith("decoder_") or str(k) == "mask_token"}
    swin = sorted(k for k in state if any(f".{s}" in k for s in _SWIN_ONLY))
    if swin:
        raise CheckpointError(
            f"{source}: holds AudioMAE's Swin decoder (decoder_mode=1; e.g. {swin[:2]}), not the plain decoder "
            f"(decoder_mode=0) that uamix_jax.models.mae.MAEDecoder implements; load the encoder only")
    if "decoder_embed.weight" not in state:
        raise CheckpointError(f"{source}: no decoder_embed.weight; not an MAE pretraining state dict with a decoder")
    dims = decoder_dims(state)
    d, m, p2 = dims["width"], dims["mlp_dim"], patch_size * patch_size
    enc_width = int(np.shape(state["decoder_embed.weight"])[1])
    n = (target_length // patch_size) * (num_mel_bins // patch_size)
    expected: dict[str, tuple[int, ...]] = {
        "decoder_embed.weight": (d, enc_width), "decoder_embed.bias": (d,), "mask_token": (1, 1, d),
        "decoder_norm.weight": (d,), "decoder_norm.bias": (d,),
        "decoder_pred.weight": (p2, d), "decoder_pred.bias": (p2,),
    }
    linear_shapes = {"attn.qkv": (3 * d, d), "attn.proj": (d, d), "mlp.fc1": (m, d), "mlp.fc2": (d, m)}
    for i in range(dims["depth"]):
        for name in _BLOCK_NORMS:
            expected[f"decoder_blocks.{i}.{name}.weight"] = expected[f"decoder_blocks.{i}.{name}.bias"] = (d,)
        for name, shape in linear_shapes.items():
            expected[f"decoder_blocks.{i}.{name}.weight"] = shape
            expected[f"decoder_blocks.{i}.{name}.bias"] = (shape[0],)
    present = set(state) - {"decoder_pos_embed"}
    missing, unknown = sorted(set(expected) - present), sorted(present - set(expected))
    misshaped = [f"{k} expected {list(expected[k])}, found {list(state[k].shape)}"
                 for k in sorted(present & set(expected)) if tuple(state[k].shape) != expected[k]]
    if missing or unknown or misshaped:
        raise CheckpointError(f"{source}: the plain decoder's keys do not fit (width {d}, depth {dims['depth']}, "
                              f"mlp {m}, patch {patch_size}): missing {missing[:6]}, unknown {unknown[:6]}, "
                              f"mis-shaped {misshaped[:6]}")
    if "decoder_pos_embed" in state:
        table = positional_table(d, target_length, num_mel_bins=num_mel_bins, patch_size=patch_size, policy=posemb)
        stored = state["decoder_pos_embed"]
        if stored.shape != (1, 1 + n, d) or float(np.abs(stored[0] - table).max()) > POS_EMBED_ATOL:
            raise CheckpointError(
                f"{source}: decoder_pos_embed {list(stored.shape)} is not the fixed sin-cos table of T = "
                f"{target_length} with posemb='{posemb}' ([1, {1 + n}, {d}]); pass the T and policy it was "
                f"trained with")

    f32, linear, layer_norm = torch_tensor_maps(state)

    params: dict[str, Any] = {"decoder_embed": linear("decoder_embed"), "mask_token": f32("mask_token"),
                              "decoder_norm": layer_norm("decoder_norm"), "decoder_pred": linear("decoder_pred")}
    for i in range(dims["depth"]):
        b = f"decoder_blocks.{i}"
        params[f"decoder_blocks_{i}"] = {
            "norm1": layer_norm(f"{b}.norm1"), "norm2": layer_norm(f"{b}.norm2"),
            "attn": {"qkv": linear(f"{b}.attn.qkv"), "proj": linear(f"{b}.attn.proj")},
            "mlp": {"fc1": linear(f"{b}.mlp.fc1"), "fc2": linear(f"{b}.mlp.fc2")},
        }
    return params


def mae_params_from_state_dict(
    state_dict: Mapping[str, Any], *, posemb: str, num_heads: int | None = None, source: str = "<state dict>",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """({'encoder', 'decoder'} params, encoder info) of a whole plain-decoder MAE state dict (AudioMAE's keys).

    The encoder as `convert_state_dict` maps it (its T from `pos_embed`); the decoder on the same grid with the
    positional policy `posemb` (the one both tables were built with).
    """
    variables, info = convert_state_dict(state_dict, num_heads=num_heads, source=source)
    decoder = decoder_params_from_state_dict(
        state_dict, target_length=info["target_length"], posemb=posemb, num_mel_bins=info["num_mel_bins"],
        patch_size=info["patch_size"], source=source)
    return {"encoder": variables["params"], "decoder": decoder}, info
