"""TrainState: everything a uaMix-MAE run needs to continue exactly after a crash.

params = {'encoder': ..., 'head': {'projector': ..., 'predictor': ...}}; batch_stats = the head's BatchNorm
statistics; ema_params / ema_batch_stats = the EMA target projector (stage 2; empty dicts when unused); the queue
(K × D unit rows), its sample ids (−1 = empty), labels (−1 = unknown; only for the neighbours' label accuracy) and
FIFO pointer. All of it is saved by orbax and restored on resume.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from flax.training import train_state


class TrainState(train_state.TrainState):
    """flax TrainState + BatchNorm statistics, EMA projector and the NNCLR queue."""

    batch_stats: Any = None
    ema_params: Any = None
    ema_batch_stats: Any = None
    queue: jax.Array | None = None
    queue_ids: jax.Array | None = None
    queue_labels: jax.Array | None = None
    queue_ptr: jax.Array | None = None
    # one bool per leaf of `params` (in jax.tree.leaves order): hashable, so it can be static under jit
    trainable: tuple[bool, ...] = struct.field(pytree_node=False, default=())

    def apply_trainable_gradients(self, grads: Any, **changes: Any) -> "TrainState":
        """One optimizer step from gradients of the trainable leaves only.

        `grads` has None on frozen leaves. Frozen parameters are carried over untouched (bitwise), not
        updated by a zero step (x + 0.0 would flip −0.0 to +0.0).
        """
        full = jax.tree.map(
            lambda g, p: jnp.zeros_like(p) if g is None else g, grads, self.params, is_leaf=lambda x: x is None
        )
        updates, opt_state = self.tx.update(full, self.opt_state, self.params)
        leaves, treedef = jax.tree.flatten(self.params)
        new = [p + u if keep else p for keep, p, u in zip(self.trainable, leaves, jax.tree.leaves(updates))]
        params = jax.tree.unflatten(treedef, new)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **changes)


def ema_update(target: Any, online: Any, momentum: float) -> Any:
    """θ_t ← m·θ_t + (1 − m)·θ (MAE-CT's target projector)."""
    return jax.tree.map(lambda t, o: momentum * t + (1.0 - momentum) * o, target, online)
