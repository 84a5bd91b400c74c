"""Safe reading of PyTorch checkpoints (AudioMAE's `save_model` dicts, `state_dict` wrappers, bare state dicts).

`torch.load(weights_only=True)` only rebuilds tensors, containers and primitives. AudioMAE's files also hold
`args`, an `argparse.Namespace`, which that mode refuses; we allow-list exactly the classes such files contain
(`argparse.Namespace`, numpy scalars and dtypes that may sit in `args`) and never fall back to
`weights_only=False`, which would execute arbitrary pickled code. torch is imported lazily: it is an optional
dependency (`pip install 'uamix-jax[convert]'`).
"""
from __future__ import annotations

import argparse
import os
import pickle
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the expected model; the message names file and keys."""


def _allow_list() -> list[Any]:
    """Classes that AudioMAE checkpoints legitimately pickle outside tensors (in `args`)."""
    allowed: list[Any] = [argparse.Namespace, np.dtype]
    scalar = getattr(getattr(np, "_core", np.core), "multiarray").scalar
    # Files written under numpy 1.x name the scalar reconstructor numpy.core.*, numpy 2.x numpy._core.*.
    allowed += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType",
                 "StrDType"):
        dtype_cls = getattr(getattr(np, "dtypes", None), name, None)
        if dtype_cls is not None:
            allowed.append(dtype_cls)
    return allowed


def _import_torch(path: str):
    try:
        import torch
    except ImportError as err:  # torch is the `convert` extra
        raise CheckpointError(
            f"{path}: reading PyTorch checkpoints needs torch; install it with "
            f"`pip install 'uamix-jax[convert]'` (or pip install torch)") from err
    return torch


def load_pth_object(path: str | os.PathLike, *, extra_safe_globals: Iterable[Any] = ()) -> Any:
    """Unpickles `path` with `torch.load(weights_only=True, map_location='cpu')` and the allow-list above.

    Raises `CheckpointError` naming the file when it is missing, truncated, not a torch file, or pickles a class
    outside the allow-list (the message names the class; pass it in `extra_safe_globals` only if you trust the file).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a PyTorch checkpoint")
    torch = _import_torch(path)
    allowed = _allow_list() + list(extra_safe_globals)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only load failed" in str(err):
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except Exception:  # noqa: BLE001 - only used to improve the message
                unsafe = []
            unsafe = [g for g in unsafe if g not in {"argparse.Namespace"}]
            raise CheckpointError(
                f"{path}: refusing to unpickle {', '.join(unsafe) or 'an object'} (not on the allow-list of "
                f"uamix_jax.interop.torch_io; AudioMAE files only need argparse.Namespace). If you trust this file, "
                f"pass the class in extra_safe_globals. torch said: {str(err).splitlines()[0]}") from err
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({err})") from err
    except Exception as err:  # noqa: BLE001 - torch.load fails in many ways on a bad file; all mean "unreadable"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, the file is truncated, corrupt or not written by "
            f"torch.save ({first})") from err


def _to_numpy(torch: Any, path: str, key: str, value: Any) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{path}: state-dict entry {key!r} is a {type(value).__name__}, not a tensor")
    value = value.detach().cpu()
    if value.is_floating_point() and value.dtype != torch.float64:
        value = value.to(torch.float32)  # bf16/fp16 have no exact numpy twin; float32 holds them exactly
    return value.numpy()


WRAPPER_KEYS = ("model", "state_dict")  # where training scripts put the weights: AudioMAE's save_model, Lightning


def state_dict_from_object(obj: Any, path: str = "<checkpoint>") -> dict[str, np.ndarray]:
    """The model state dict of a loaded checkpoint: `obj['model']` (AudioMAE's save_model), `obj['state_dict']`, or
    `obj` itself (a bare state dict of tensors, as timm's `pytorch_model.bin`).

    Returns name → numpy array (floating tensors as float32). Raises `CheckpointError` when no form fits.
    """
    torch = _import_torch(path)
    wrapper = next((k for k in WRAPPER_KEYS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)), None)
    if wrapper is not None:
        state = obj[wrapper]
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        found = sorted(map(str, obj))[:12] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{path}: expected an AudioMAE checkpoint (a dict with the weights under 'model' or 'state_dict') or "
            f"a bare state dict of tensors; found {found}")
    return {str(k): _to_numpy(torch, path, str(k), v) for k, v in state.items()}


def load_pth(path: str | os.PathLike, *, extra_safe_globals: Iterable[Any] = ()) -> dict[str, np.ndarray]:
    """Reads a PyTorch file (`.pth`, `.pt`, `.bin`: any name) safely and returns its model state dict as numpy
    arrays (see `state_dict_from_object`).

    Accepts AudioMAE's full `save_model` dict (`model`, `optimizer`, `epoch`, `scaler`, `args`), a dict with the
    weights under `state_dict`, or a bare state dict. Raises `CheckpointError` naming the file for a missing,
    truncated, non-torch or non-state-dict file.
    """
    path = os.fspath(path)
    return state_dict_from_object(load_pth_object(path, extra_safe_globals=extra_safe_globals), path)
