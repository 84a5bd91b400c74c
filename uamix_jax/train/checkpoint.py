"""Orbax checkpoints of the TrainState and the input pipeline's position, behind one small class.

Layout: `<workdir>/checkpoints/<step>/{state, data}`; `state` is the TrainState's state dict (params, opt state,
BatchNorm statistics, EMA projector, queue, step), `data` is grain's per-process iterator state. Saves are atomic
(orbax writes to a temporary folder and renames), so a crash mid-save leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import serialization

from uamix_jax.interop.workdir import restore_state_dict  # noqa: F401  (re-exported: its old home)


class Checkpointer:
    """Saves every `every` steps (and when forced), keeps the last `keep`, restores the latest."""

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any | None = None, *, force: bool = False) -> bool:
        items: dict[str, Any] = {"state": ocp.args.StandardSave(serialization.to_state_dict(state))}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, state_template: Any, step: int | None = None, data_iterator: Any | None = None) -> Any:
        """Restores into the structure (and shardings) of `state_template`; also moves `data_iterator` in place."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, serialization.to_state_dict(state_template))
        items: dict[str, Any] = {"state": ocp.args.StandardRestore(abstract)}
        if data_iterator is not None and os.path.isdir(os.path.join(self.directory, str(step), "data")):
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return serialization.from_state_dict(state_template, restored["state"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

