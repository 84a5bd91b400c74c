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

    def apply_trainable_gradients(self, grads: Any, **changes: Any) -> "TrainState":
        """One optimizer step from gradients of the trainable leaves only.

        `grads` is the params tree with None on frozen leaves (`optim.split_trainable`'s trainable half, so the
        path-keyed trainable mask is the one place that says what trains). Frozen parameters are carried over
        untouched (bitwise), not updated by a zero step (x + 0.0 would flip −0.0 to +0.0).
        """
        is_none = lambda x: x is None  # noqa: E731
        full = jax.tree.map(lambda g, p: jnp.zeros_like(p) if g is None else g, grads, self.params, is_leaf=is_none)
        updates, opt_state = self.tx.update(full, self.opt_state, self.params)
        params = jax.tree.map(lambda g, p, u: p if g is None else p + u, grads, self.params, updates, is_leaf=is_none)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **changes)


def ema_update(target: Any, online: Any, momentum: float) -> Any:
    """θ_t ← m·θ_t + (1 − m)·θ (MAE-CT's target projector)."""
    return jax.tree.map(lambda t, o: momentum * t + (1.0 - momentum) * o, target, online)
