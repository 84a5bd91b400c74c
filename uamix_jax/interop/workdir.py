"""Reading a uamix-jax training workdir (any task: tuning, pretraining, fine-tuning) without the trainer.

A workdir holds `config.json` (the config as run, with its `model` block, plus `derived`) and `checkpoints/<step>/`
written by `uamix_jax.train.checkpoint.Checkpointer` (orbax; a step folder appears only once its save finished).
Every task stores the encoder under `params['encoder']`. This module is the one reader used by training
(`init_from`), evaluation (`load_encoder`) and the exporter, so `evaluation` needs nothing from `train`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from uamix_jax.models.vit import VIT_SIZES

__all__ = ["CONFIG_FILE", "CHECKPOINT_DIR", "finished_steps", "is_training_workdir", "workdir_problem",
           "read_workdir_config", "workdir_model", "restore_state_dict", "assign_tree"]

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
_SHOWN = 8  # paths listed per kind of mismatch in an error message


def finished_steps(path: str | os.PathLike) -> list[int]:
    """The steps under `<path>/checkpoints/` whose save finished (orbax renames a step folder to its number last)."""
    ckpt_dir = os.path.join(os.fspath(path), CHECKPOINT_DIR)
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(name) for name in os.listdir(ckpt_dir)
                  if name.isdigit() and os.path.isdir(os.path.join(ckpt_dir, name)))


def workdir_problem(path: str | os.PathLike) -> str | None:
    """None when `path` is a training workdir, else what it lacks (for error messages)."""
    path = os.fspath(path)
    lacks = []
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
        lacks.append(f"no {CONFIG_FILE} (the trainer writes it at start)")
    if not os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
        lacks.append(f"no {CHECKPOINT_DIR}/ folder")
    elif not finished_steps(path):
        lacks.append(f"no finished checkpoint under {CHECKPOINT_DIR}/ (none has been saved yet)")
    return "; ".join(lacks) or None


def is_training_workdir(path: str | os.PathLike) -> bool:
    """True for a folder with `config.json` and at least one finished step under `checkpoints/` (any task)."""
    return os.path.isdir(os.fspath(path)) and workdir_problem(path) is None


def read_workdir_config(path: str | os.PathLike) -> dict[str, Any]:
    """`<path>/config.json` as a dict (the config as run + `derived`); errors name the file."""
    config_path = os.path.join(os.fspath(path), CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{os.fspath(path)}: a training workdir needs {CONFIG_FILE} (written by the trainer "
                                f"at start) to know its model; it is missing")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path}: not readable JSON ({type(err).__name__}: {err})") from err
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object (the config), found {type(config).__name__}")
    return config


def workdir_model(path: str | os.PathLike) -> dict[str, Any]:
    """The encoder fields of a workdir's `config.json` model block: size, target_length, pooling, posemb."""
    config = read_workdir_config(path)
    config_path = os.path.join(os.fspath(path), CONFIG_FILE)
    try:
        model = config["model"]
        fields = {k: model[k] for k in ("size", "target_length", "pooling")}
    except (KeyError, TypeError) as err:
        raise ValueError(f"{config_path}: cannot read model.size / model.target_length / model.pooling "
                         f"({type(err).__name__}: {err}); is this a uamix-jax training config?") from err
    fields["posemb"] = model.get("posemb", "prefix")
    if fields["size"] not in VIT_SIZES:
        raise ValueError(f"{config_path}: model.size {fields['size']!r} is not one of {sorted(VIT_SIZES)}")
    return fields


def restore_state_dict(workdir: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
    """The raw state dict of a workdir's checkpoint (latest finished step by default), numpy arrays on the host.

    Reads `checkpoints/<step>/state` with orbax without a template, so it needs neither the optimizer nor the
    TrainState class: used to initialise stage 2 from stage 1, to load a tuned encoder and to export.
    """
    import orbax.checkpoint as ocp  # heavy; only when a checkpoint is read

    workdir = os.fspath(workdir)
    ckpt_dir = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"{workdir} is not a training workdir: it has no {CHECKPOINT_DIR}/ folder")
    steps = finished_steps(workdir)
    if step is None:
        if not steps:
            raise FileNotFoundError(f"{ckpt_dir} holds no finished checkpoint")
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(f"{ckpt_dir} has no finished checkpoint of step {step}; it has {steps}")
    path = os.path.join(ckpt_dir, str(step), "state")
    # Restored as numpy arrays on the host, whatever devices wrote the checkpoint: a run saved from 8 TPU cores loads
    # on a laptop (orbax would otherwise place every array on the devices recorded in its metadata, and refuse when
    # they do not exist here), and nothing is copied to an accelerator.
    from etils import epath

    tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(path))  # the array tree, read from the step folder
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), dict(tree))
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        restored = checkpointer.restore(path, restore_args=restore_args)
    finally:
        checkpointer.close()
    return jax.tree.map(np.asarray, dict(restored))


def _flat(tree: Any) -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {"": tree}
    return {"/".join(map(str, k)): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def _listed(items: list[str]) -> str:
    return ", ".join(items[:_SHOWN]) + (f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


def assign_tree(template: Any, loaded: Any, what: str, source: str, *, hint: str = "") -> Any:
    """`loaded` in the structure and dtypes of `template` (arrays or ShapeDtypeStructs), every path and shape checked.

    Returns a nested dict of jax arrays cast to the template's dtypes. Raises ValueError naming `source`, `what`
    and every missing, unexpected and mis-shaped path (with expected and found shapes); `hint` says what to do.
    """
    want, got = _flat(template), _flat(loaded)
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    misshaped = [f"{k} expected {tuple(np.shape(want[k]))}, found {tuple(np.shape(got[k]))}"
                 for k in sorted(set(want) & set(got)) if tuple(np.shape(want[k])) != tuple(np.shape(got[k]))]
    if missing or unexpected or misshaped:
        parts = [f"{source}: the {what} does not fit"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                parts.append(f"{label} ({len(items)}): {_listed(items)}")
        raise ValueError("; ".join(parts) + (f". {hint}" if hint else ""))
    out = {k: jnp.asarray(got[k], getattr(want[k], "dtype", None)) for k in want}
    if set(out) == {""}:
        return out[""]
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in out.items()})
