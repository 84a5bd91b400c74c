"""AudioMAE checkpoint → Flax variables: the key mapping, converted-directory storage, and `load_audiomae`.

Mapping (docs/method.md, "Checkpoint conversion"), torch name → Flax path under 'params':

    patch_embed.proj.weight [D, 1, p, p] (OIHW)  → patch_embed/proj/kernel [p, p, 1, D] (HWIO, transpose 2,3,1,0)
    <linear>.weight [out, in]                    → <linear>/kernel [in, out] (transpose); biases as they are
    blocks.i.attn.qkv.weight [3D, D]             → blocks_i/attn/qkv/kernel [D, 3D] (fused; q | k | v as timm)
    <layernorm>.weight / .bias                   → <layernorm>/scale / bias
    cls_token [1, 1, D]                          → cls_token
    pos_embed [1, 1 + n, D]                      → verified against the generated table, not stored
    dropped: mask_token, decoder_* (pretrained), head.* (either format)

The format is detected from the keys (`norm`, with or without the decoder → 'pretrained', pooling 'norm_mean';
`fc_norm`, with or without `head` → 'finetuned', pooling 'fc_norm': AudioMAE's fine-tuned files and timm's
`global_pool='avg'` copies) and the size from the shapes. Files are read by `weights_io.read_state_dict`
(PyTorch files of any name, `.safetensors`, `hf-hub:ORG/NAME[@REVISION]`).
"""
from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from uamix_jax.interop.torch_io import CheckpointError
from uamix_jax.interop.weights_io import read_state_dict
from uamix_jax.models.posemb import PRETRAIN_LENGTH, positional_table
from uamix_jax.models.vit import VIT_SIZES, AudioMAEEncoder

__all__ = ["CheckpointError", "convert_state_dict", "save_converted", "load_converted", "load_audiomae",
           "encoder_from_info", "own_posemb", "resolve_input", "INFO_FILE", "VARIABLES_DIR"]

INFO_FILE = "audiomae.json"
VARIABLES_DIR = "variables"
FORMAT_VERSION = 1
NUM_MEL_BINS = 128  # AudioMAE's input; the state dict alone cannot tell F from T
POS_EMBED_ATOL = 1e-6  # the table is float64 → float32; 1e-6 is a few float32 ulps at |x| ≤ 1

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")
_ENCODER_MARKERS = ("patch_embed.proj.weight", "cls_token", "pos_embed")
_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
_NORMS = ("norm1", "norm2")


def _is_dropped(key: str, fmt: str) -> bool:
    """Keys the encoder does not use: any classifier `head`, and the pretraining decoder of a `norm` file."""
    if key.startswith("head."):
        return True
    return fmt == "pretrained" and (key == "mask_token" or key.startswith("decoder_"))


def _detect_format(keys: set[str], source: str) -> str:
    """'pretrained' (final `norm`) or 'finetuned' (final `fc_norm`); a `head` may come with either."""
    pretrained = {k for k in keys if k.startswith(("norm.", "decoder_")) or k == "mask_token"}
    finetuned = {k for k in keys if k.startswith("fc_norm.")}
    if not any(m in keys for m in _ENCODER_MARKERS) and not any(_BLOCK_KEY.match(k) for k in keys):
        sample = ", ".join(sorted(keys)[:8]) + (", ..." if len(keys) > 8 else "")
        raise CheckpointError(
            f"{source}: not an AudioMAE ViT state dict: none of {', '.join(_ENCODER_MARKERS)} or blocks.N.* is "
            f"present ({len(keys)} keys: {sample}). Pass AudioMAE's pretrained.pth or finetuned.pth, or a timm "
            f"copy of them")
    if pretrained and finetuned:
        raise CheckpointError(
            f"{source}: mixes the pretrained format ({', '.join(sorted(pretrained)[:3])}) with the fine-tuned "
            f"format ({', '.join(sorted(finetuned)[:3])}); a ViT state dict has one final LayerNorm: `norm` "
            f"(AudioMAE's pretrained files, timm's fc_norm=False) or `fc_norm` (AudioMAE's fine-tuned files, timm's "
            f"global_pool='avg'), not both")
    if finetuned:
        return "finetuned"
    if pretrained:
        return "pretrained"
    raise CheckpointError(
        f"{source}: missing keys norm.weight, norm.bias (pretrained format) or fc_norm.weight, fc_norm.bias "
        f"(fine-tuned format): the final LayerNorm is absent, so the pooling cannot be determined")


def _first_dim(state: Mapping[str, np.ndarray], candidates: tuple[tuple[str, int], ...]) -> int | None:
    for key, axis in candidates:
        if key in state and -np.ndim(state[key]) <= axis < np.ndim(state[key]):
            return int(np.shape(state[key])[axis])
    return None


def _infer_dims(state: Mapping[str, np.ndarray], num_heads: int | None, source: str) -> dict[str, int]:
    width = _first_dim(state, (("cls_token", -1), ("patch_embed.proj.weight", 0), ("pos_embed", -1),
                               ("blocks.0.norm1.weight", 0)))
    if width is None:
        raise CheckpointError(f"{source}: cannot tell the model width: cls_token, patch_embed.proj.weight, "
                              f"pos_embed and blocks.0.norm1.weight are all missing")
    block_ids = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))}
    depth = max(block_ids) + 1 if block_ids else 0
    mlp_dim = next((int(np.shape(state[f"blocks.{i}.mlp.fc1.weight"])[0]) for i in sorted(block_ids)
                    if f"blocks.{i}.mlp.fc1.weight" in state), 4 * width)
    patch_size = _first_dim(state, (("patch_embed.proj.weight", -1),)) or 16
    n_tokens = _first_dim(state, (("pos_embed", 1),))
    n_freq = NUM_MEL_BINS // patch_size
    if n_tokens is None:
        target_length = PRETRAIN_LENGTH
    elif (n_tokens - 1) <= 0 or (n_tokens - 1) % n_freq:
        raise CheckpointError(
            f"{source}: pos_embed has {n_tokens} rows, which is not 1 + {n_freq}·(T/{patch_size}) for any T; "
            f"AudioMAE tables have 1 + (F/16)(T/16) rows with F = {NUM_MEL_BINS}")
    else:
        target_length = (n_tokens - 1) // n_freq * patch_size
    if num_heads is None:
        by_width = {w: h for (w, _, h, _) in VIT_SIZES.values()}
        num_heads = by_width.get(width, max(1, width // 64))  # every ViT size uses 64-wide heads
    if width % num_heads:
        raise CheckpointError(f"{source}: width {width} is not divisible by num_heads={num_heads}")
    return dict(width=width, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim, patch_size=patch_size,
                num_mel_bins=NUM_MEL_BINS, target_length=target_length)


def _expected_shapes(fmt: str, dims: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    d, m, p = dims["width"], dims["mlp_dim"], dims["patch_size"]
    n = (dims["target_length"] // p) * (dims["num_mel_bins"] // p)
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, d), "pos_embed": (1, 1 + n, d),
        "patch_embed.proj.weight": (d, 1, p, p), "patch_embed.proj.bias": (d,),
    }
    linear_shapes = {"attn.qkv": (3 * d, d), "attn.proj": (d, d), "mlp.fc1": (m, d), "mlp.fc2": (d, m)}
    for i in range(dims["depth"]):
        for name in _NORMS:
            shapes[f"blocks.{i}.{name}.weight"] = shapes[f"blocks.{i}.{name}.bias"] = (d,)
        for name, (out_dim, in_dim) in linear_shapes.items():
            shapes[f"blocks.{i}.{name}.weight"] = (out_dim, in_dim)
            shapes[f"blocks.{i}.{name}.bias"] = (out_dim,)
    final = "norm" if fmt == "pretrained" else "fc_norm"
    shapes[f"{final}.weight"] = shapes[f"{final}.bias"] = (d,)
    return shapes


def _check_keys(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], fmt: str,
                dims: Mapping[str, int], source: str) -> None:
    kept = {k for k in state if not _is_dropped(k, fmt)}
    missing = sorted(set(expected) - kept, key=_natural)
    unexpected = sorted(kept - set(expected), key=_natural)
    misshaped = sorted((k for k in kept & set(expected) if tuple(np.shape(state[k])) != expected[k]), key=_natural)
    if not (missing or unexpected or misshaped):
        return
    lines = [f"{source}: state dict does not match an AudioMAE ViT ({fmt} format, width {dims['width']}, depth "
             f"{dims['depth']}, mlp {dims['mlp_dim']}, patch {dims['patch_size']}, T = {dims['target_length']}):"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): " + ", ".join(f"{k} {list(expected[k])}" for k in missing))
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): "
                     + ", ".join(f"{k} {list(np.shape(state[k]))}" for k in unexpected))
    if misshaped:
        lines.append(f"  wrong shapes ({len(misshaped)}): " + ", ".join(
            f"{k} expected {list(expected[k])}, found {list(np.shape(state[k]))}" for k in misshaped))
    raise CheckpointError("\n".join(lines))


def _natural(key: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _check_pos_embed(stored: np.ndarray, dims: Mapping[str, int], source: str) -> str:
    """Returns the policy whose generated table equals the stored one ('audiomae' first); raises otherwise.

    A table stored in half precision (every value exactly a bfloat16 or float16, as in a checkpoint saved in that
    dtype) is compared with the generated table rounded the same way (float32, then the half dtype)."""
    t, d = dims["target_length"], dims["width"]
    kw = dict(num_mel_bins=dims["num_mel_bins"], patch_size=dims["patch_size"])
    stored32 = np.asarray(stored, np.float32)[0]
    half = next((h for h in (ml_dtypes.bfloat16, np.float16)
                 if np.array_equal(stored32.astype(h).astype(np.float32), stored32)), None)

    def rounded(table: np.ndarray) -> np.ndarray:
        table = table.astype(np.float32)
        return (table if half is None else table.astype(half)).astype(np.float64)

    stored = stored32.astype(np.float64)
    candidates = [("audiomae", rounded(positional_table(d, t, policy="audiomae", **kw)))]
    if t <= PRETRAIN_LENGTH:
        candidates.append(("prefix", rounded(positional_table(d, t, policy="prefix", **kw))))
    diffs = []
    for policy, table in candidates:
        diff = np.abs(stored - table)
        if float(diff.max()) <= POS_EMBED_ATOL:
            return policy
        diffs.append((float(diff.max()), int(np.unravel_index(diff.argmax(), diff.shape)[0]), policy))
    worst, row, policy = min(diffs)
    raise CheckpointError(
        f"{source}: pos_embed is not AudioMAE's fixed sin-cos table for T = {t}: max |Δ| = {worst:.3g} (row {row}) "
        f"against the '{policy}' table (tolerance {POS_EMBED_ATOL}). uamix_jax generates this table instead of "
        f"loading it, so a checkpoint with a trained or differently built pos_embed cannot be converted")


def torch_tensor_maps(state: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """(f32, linear, layer_norm) readers of a PyTorch state dict into Flax leaves: `f32(key)` float32 array;
    `linear(prefix)` {kernel = weightᵀ, bias}; `layer_norm(prefix)` {scale = weight, bias}. Shared by the encoder's
    and the MAE decoder's mappings."""

    def f32(key: str) -> np.ndarray:
        return np.ascontiguousarray(state[key], dtype=np.float32)

    def linear(prefix: str) -> dict[str, np.ndarray]:
        return {"kernel": np.ascontiguousarray(f32(f"{prefix}.weight").T), "bias": f32(f"{prefix}.bias")}

    def layer_norm(prefix: str) -> dict[str, np.ndarray]:
        return {"scale": f32(f"{prefix}.weight"), "bias": f32(f"{prefix}.bias")}

    return f32, linear, layer_norm


def convert_state_dict(state_dict: Mapping[str, Any], *, num_heads: int | None = None,
                       source: str = "<state dict>") -> tuple[dict, dict]:
    """Maps an AudioMAE state dict (name → array [torch layout]) to Flax variables `{'params': ...}` (numpy).

    Detects the format (pretrained: `norm`; fine-tuned: `fc_norm`) and the size from the shapes (`num_heads`
    cannot be read from shapes: it defaults to the named size with that width, else width / 64). Verifies
    `pos_embed` against the generated table. Returns `(variables, info)`; `info` holds format, model_size, width,
    depth, num_heads, mlp_dim, patch_size, num_mel_bins, target_length, pooling, checkpoint_posemb, source_file,
    dropped_keys, num_classes (when a `head` was dropped) and num_params. Raises `CheckpointError` naming every
    missing, unexpected or mis-shaped key with expected vs found shape.
    """
    state = {str(k): np.asarray(v) for k, v in state_dict.items()}
    fmt = _detect_format(set(state), source)
    dims = _infer_dims(state, num_heads, source)
    _check_keys(state, _expected_shapes(fmt, dims), fmt, dims, source)
    checkpoint_posemb = _check_pos_embed(state["pos_embed"], dims, source)

    f32, linear, layer_norm = torch_tensor_maps(state)

    params: dict[str, Any] = {
        "patch_embed": {"proj": {
            "kernel": np.ascontiguousarray(f32("patch_embed.proj.weight").transpose(2, 3, 1, 0)),
            "bias": f32("patch_embed.proj.bias")}},
        "cls_token": f32("cls_token"),
    }
    for i in range(dims["depth"]):
        params[f"blocks_{i}"] = {
            "norm1": layer_norm(f"blocks.{i}.norm1"), "norm2": layer_norm(f"blocks.{i}.norm2"),
            "attn": {"qkv": linear(f"blocks.{i}.attn.qkv"), "proj": linear(f"blocks.{i}.attn.proj")},
            "mlp": {"fc1": linear(f"blocks.{i}.mlp.fc1"), "fc2": linear(f"blocks.{i}.mlp.fc2")},
        }
    final = "norm" if fmt == "pretrained" else "fc_norm"
    params[final] = layer_norm(final)

    size = next((name for name, s in VIT_SIZES.items()
                 if s == (dims["width"], dims["depth"], dims["num_heads"], dims["mlp_dim"])), "custom")
    dropped = sorted((k for k in state if _is_dropped(k, fmt)), key=_natural)
    info: dict[str, Any] = {
        "format": fmt, "model_size": size, "source_file": source, **dims,
        "pooling": "norm_mean" if fmt == "pretrained" else "fc_norm",
        "checkpoint_posemb": checkpoint_posemb, "dropped_keys": dropped,
        "num_params": int(sum(a.size for a in jax.tree.leaves(params))),
    }
    if "head.weight" in state:
        info["num_classes"] = int(np.shape(state["head.weight"])[0])
    return {"params": params}, info


def own_posemb(target_length: int, checkpoint_posemb: str) -> str:
    """The policy that reproduces a checkpoint's own table: 'prefix' at T = 1024 (there both policies give AudioMAE's
    table, and 'prefix', the default for frozen use, keeps those codes on shorter inputs), else the policy its table
    matched (docs/method.md, "Positional tables")."""
    return "prefix" if target_length == PRETRAIN_LENGTH else checkpoint_posemb


def resolve_input(own_length: int, own_table: str, target_length: int | None, posemb: str | None,
                  source: str, *, stacklevel: int = 3) -> tuple[int, str]:
    """(T, policy) to build an encoder with: each of `target_length` / `posemb` the checkpoint's own when None.

    An explicit choice overrides; one that gives the checkpoint's own T another table warns (its tokens would get
    other positional codes than in training).
    """
    t = int(target_length or own_length)
    policy = posemb or own_table
    if t == own_length != PRETRAIN_LENGTH and policy != own_table:
        warnings.warn(f"{source}: this checkpoint was trained at T = {t} with the '{own_table}' positional table; "
                      f"posemb='{policy}' gives its tokens other codes", stacklevel=stacklevel)
    return t, policy


def encoder_from_info(info: Mapping[str, Any], *, target_length: int | None = None, posemb: str | None = None,
                      dtype: Any = jnp.float32, **overrides: Any) -> AudioMAEEncoder:
    """The `AudioMAEEncoder` that the converted variables described by `info` fit (None: the checkpoint's own T and
    table; no warning here, see `load_audiomae`)."""
    fields = {k: info[k] for k in ("width", "depth", "num_heads", "mlp_dim", "patch_size", "num_mel_bins",
                                   "pooling")}
    own = own_posemb(info["target_length"], info["checkpoint_posemb"])
    fields.update(target_length=int(target_length or info["target_length"]), posemb=posemb or own, dtype=dtype)
    fields.update(overrides)
    return AudioMAEEncoder(**fields)


def save_converted(directory: str | os.PathLike, variables: Mapping[str, Any], info: Mapping[str, Any], *,
                   overwrite: bool = False) -> str:
    """Writes `directory/variables` (orbax StandardCheckpointer) and `directory/audiomae.json` (`info`).

    Returns the absolute directory. Refuses a directory that already holds a conversion unless `overwrite`.
    """
    import orbax.checkpoint as ocp  # heavy import, only when writing

    directory = os.path.abspath(os.fspath(directory))
    target = os.path.join(directory, VARIABLES_DIR)
    info_path = os.path.join(directory, INFO_FILE)
    if os.path.exists(target) or os.path.exists(info_path):
        if not overwrite:
            raise CheckpointError(f"{directory}: already holds a converted checkpoint ({VARIABLES_DIR}/ or "
                                  f"{INFO_FILE}); choose another --output or pass overwrite=True / --overwrite")
        import shutil

        shutil.rmtree(target, ignore_errors=True)
        if os.path.exists(info_path):
            os.remove(info_path)
    os.makedirs(directory, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(target, jax.tree.map(np.asarray, dict(variables)))
    checkpointer.wait_until_finished()
    checkpointer.close()
    from uamix_jax import __version__

    record = {"format_version": FORMAT_VERSION, "converted_with": f"uamix-jax {__version__}", **dict(info)}
    with open(info_path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    return directory


def load_converted(directory: str | os.PathLike) -> tuple[dict, dict]:
    """Reads a directory written by `save_converted`; returns `(variables, info)` with numpy arrays."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(os.fspath(directory))
    info_path = os.path.join(directory, INFO_FILE)
    if not os.path.isfile(info_path):
        raise CheckpointError(f"{directory}: no {INFO_FILE}; this is not a directory written by "
                              f"tools/convert_audiomae.py (convert the .pth first, or pass the .pth itself)")
    with open(info_path, encoding="utf-8") as f:
        info = json.load(f)
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{info_path}: format_version {info.get('format_version')!r}, expected "
                              f"{FORMAT_VERSION}; re-run tools/convert_audiomae.py on the .pth")
    encoder = encoder_from_info(info)
    abstract = jax.eval_shape(encoder.init, jax.random.key(0),
                              jax.ShapeDtypeStruct((1, encoder.target_length, encoder.num_mel_bins), jnp.float32))
    checkpointer = ocp.StandardCheckpointer()
    try:
        variables = checkpointer.restore(os.path.join(directory, VARIABLES_DIR), abstract)
    except Exception as err:  # noqa: BLE001 - orbax raises many types; all mean "this directory is unusable"
        raise CheckpointError(f"{directory}/{VARIABLES_DIR}: cannot restore the encoder variables described by "
                              f"{INFO_FILE} ({type(err).__name__}: {str(err)[:300]})") from err
    finally:
        checkpointer.close()
    return jax.tree.map(np.asarray, variables), info


def load_audiomae(path: str | os.PathLike, *, target_length: int | None = None, posemb: str | None = None,
                  dtype: Any = jnp.float32, num_heads: int | None = None,
                  attention: str = "auto") -> tuple[AudioMAEEncoder, dict]:
    """Loads an AudioMAE encoder from a weights file, a hub name or a converted directory.

    `path`: a PyTorch file of any name (`.pth`, `.pt`, `.bin`; AudioMAE's, timm's or an export; weights bare or under
    `model` / `state_dict`), a `.safetensors` file, `hf-hub:ORG/NAME[@REVISION]` (`weights_io`), or a directory
    written by `save_converted`.

    Returns `(encoder, variables)`; `encoder.apply(variables, fbank)` with fbank [B, T, 128] (normalised) gives
    `(tokens [B, 1 + 8·T/16, D], embedding [B, D])`. By default the encoder is the one the checkpoint was trained
    with: its own T (from `pos_embed`'s rows: T = 16·(rows − 1)/8) and its own positional table (the one its
    `pos_embed` holds). An explicit `target_length` and/or `posemb` ('prefix' or 'audiomae', see
    `uamix_jax.models.posemb`) override; giving the checkpoint's own T another table warns. `attention`: see
    `AudioMAEEncoder.attention`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        variables, info = load_converted(path)
    else:
        state, source = read_state_dict(path)
        variables, info = convert_state_dict(state, num_heads=num_heads, source=source)
    own = own_posemb(info["target_length"], info["checkpoint_posemb"])
    t, policy = resolve_input(info["target_length"], own, target_length, posemb, path)
    encoder = encoder_from_info(info, target_length=t, posemb=policy, dtype=dtype, attention=attention)
    return encoder, jax.tree.map(jnp.asarray, variables)
