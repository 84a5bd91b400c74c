"""AudioMAE weights as users find them: a PyTorch file, a `.safetensors` file, or a Hugging Face hub name.

    read_state_dict("pretrained.pth")                                    # .pth / .pt / .bin, any name (torch_io)
    read_state_dict("model.safetensors")                                 # no pickle, no torch; bf16 read exactly
    read_state_dict("hf-hub:gaunernst/vit_base_patch16_1024_128.audiomae_as2m")   # [@REVISION]

Each returns `(state_dict, source)`: name → numpy array (bfloat16 and float16 widened to float32, exactly), and a
description of where it came from for messages and `info['source_file']`. The key layout (AudioMAE or timm: `norm`
or `fc_norm`, with or without `head`, with or without the decoder) is `convert_state_dict`'s business.

A hub name resolves through `huggingface_hub.hf_hub_download`, so its cache serves it offline (`HF_HUB_OFFLINE=1`)
once downloaded: `model.safetensors` first, then `pytorch_model.bin`. When the repository's `config.json` gives a
`pretrained_cfg` mean/std other than AudioSet's fbank statistics, the log says which normalisation it expects.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import Any

import ml_dtypes  # noqa: F401 - registers numpy's 'bfloat16' dtype, which safetensors' numpy backend asks for
import numpy as np
from absl import logging

from uamix_jax.audio.features import DATASET_STATS
from uamix_jax.interop.torch_io import CheckpointError, load_pth

__all__ = ["HUB_PREFIX", "HUB_FILES", "is_hub_name", "parse_hub_name", "read_state_dict", "load_safetensors",
           "save_safetensors", "resolve_hub_name", "hub_stats"]

HUB_PREFIX = "hf-hub:"
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # tried in this order
SAFETENSORS_SUFFIX = ".safetensors"
_STATS_RTOL = 1e-6


def is_hub_name(path: Any) -> bool:
    """True for a string `hf-hub:ORG/NAME[@REVISION]`."""
    return isinstance(path, str) and path.startswith(HUB_PREFIX)


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """`hf-hub:ORG/NAME[@REVISION]` → (repo_id 'ORG/NAME', revision or None). Raises CheckpointError otherwise."""
    body = name[len(HUB_PREFIX):] if is_hub_name(name) else name
    repo_id, at, revision = body.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or (at and not revision):
        raise CheckpointError(f"{name}: not a hub name; write {HUB_PREFIX}ORG/NAME or {HUB_PREFIX}ORG/NAME@REVISION "
                              f"(a branch, tag or commit hash)")
    return repo_id, revision or None


def _looks_like_safetensors(path: str) -> bool:
    """A `.safetensors` name, or the format's first bytes: an 8-byte little-endian header size, then '{'."""
    if path.endswith(SAFETENSORS_SUFFIX):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < os.path.getsize(path)


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a `.safetensors` file as numpy (safetensors' numpy backend: no pickle, no torch).

    bfloat16 and float16 tensors come back as float32 (exact), the others as stored. Raises
    CheckpointError naming the file when it is missing, truncated or not a safetensors file; nothing is returned
    half-read.
    """
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such weights file")
    try:
        with safe_open(path, framework="np") as f:
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, TypeError (unknown dtype): all "unreadable"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file, it is truncated, corrupt or holds an "
                              f"unsupported dtype ({first})") from err
    if not raw:
        raise CheckpointError(f"{path}: the safetensors file holds no tensors")
    half = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
    return {k: v.astype(np.float32) if v.dtype in half else np.array(v) for k, v in raw.items()}


def save_safetensors(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray],
                     metadata: Mapping[str, str] | None = None) -> str:
    """Writes `state_dict` (name → numpy array) as a `.safetensors` file with `{'format': 'pt', **metadata}` in its
    header (the marker PyTorch-side loaders such as timm's look for); returns the absolute path."""
    from safetensors.numpy import save_file

    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tensors = {k: np.array(v, order="C") for k, v in state_dict.items()}  # (ascontiguousarray makes 0-d 1-d)
    save_file(tensors, path, metadata={"format": "pt", **dict(metadata or {})})
    return path


def hub_stats(config: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    """The (mean, std) a timm-style `config.json` gives in `pretrained_cfg` (lists: one value, or one per channel), or
    None when it gives none."""
    cfg = config.get("pretrained_cfg") if isinstance(config, Mapping) else None
    if not isinstance(cfg, Mapping) or cfg.get("mean") is None or cfg.get("std") is None:
        return None
    mean, std = (np.atleast_1d(np.asarray(cfg[k], np.float64)).tolist() for k in ("mean", "std"))
    return mean, std


def _note_normalisation(name: str, config: Mapping[str, Any]) -> None:
    stats = hub_stats(config)
    if stats is None:
        return
    (mean, std), audioset = stats, DATASET_STATS["audioset"]
    if len(mean) == len(std) == 1 and np.allclose([mean[0], std[0]], audioset, rtol=_STATS_RTOL, atol=0):
        return
    logging.warning("%s: its config.json (pretrained_cfg) expects inputs normalised with mean %s and std %s, not "
                    "AudioSet's fbank statistics (%s, %s) that uamix-jax uses by default; pass matching stats "
                    "(config.data.stats, or the HEAR model's stats)", name, mean, std, *audioset)


def resolve_hub_name(name: str) -> str:
    """The local path of a hub repository's weights (`model.safetensors`, else `pytorch_model.bin`), downloaded into
    the Hugging Face cache or found there (offline with `HF_HUB_OFFLINE=1`). Logs a non-AudioSet normalisation.

    Raises CheckpointError naming the hub name when neither file can be had (not in the cache while offline, no
    such repository or revision, neither file in it).
    """
    repo_id, revision = parse_hub_name(name)
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    problems = []
    path = None
    for filename in HUB_FILES:
        try:
            path = hf_hub_download(repo_id, filename, revision=revision)
            break
        except (EntryNotFoundError, LocalEntryNotFoundError) as err:
            problems.append(f"{filename}: {type(err).__name__}")
        except Exception as err:  # noqa: BLE001 - repository/revision not found, HTTP errors: name them all
            raise CheckpointError(f"{name}: cannot fetch {filename} from the Hugging Face hub "
                                  f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''})"
                                  ) from err
    if path is None:
        where = f"the Hugging Face cache {constants.HF_HUB_CACHE}"
        offline = " and HF_HUB_OFFLINE is set, so nothing is downloaded" if constants.HF_HUB_OFFLINE else ""
        raise CheckpointError(f"{name}: neither {' nor '.join(HUB_FILES)} of {repo_id}"
                              f"{'@' + revision if revision else ''} is in {where}{offline} "
                              f"({'; '.join(problems)}); download it once with network access "
                              f"(`hf download {repo_id}`, or any load with HF_HUB_OFFLINE unset) or pass a local file")
    try:
        config_path = hf_hub_download(repo_id, "config.json", revision=revision)
        with open(config_path, encoding="utf-8") as f:
            _note_normalisation(name, json.load(f))
    except (EntryNotFoundError, LocalEntryNotFoundError, OSError, ValueError):
        pass  # config.json is optional: without it the normalisation cannot be checked
    return path


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
    """(state dict as numpy, source description) of a PyTorch file, a safetensors file or an `hf-hub:` name.

    PyTorch files of any name (`.pth`, `.pt`, `.bin`) go through `torch_io.load_pth` (weights under `model`,
    `state_dict`, or bare); `.safetensors` (or a file that starts like one) through `load_safetensors`.
    """
    if is_hub_name(path):
        local = resolve_hub_name(path)
        state, _ = read_state_dict(local)
        return state, f"{path} ({local})"
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file (pass a .pth/.pt/.bin or .safetensors file, a "
                              f"converted directory, or {HUB_PREFIX}ORG/NAME)")
    if _looks_like_safetensors(path):
        return load_safetensors(path), path
    return load_pth(path), path
