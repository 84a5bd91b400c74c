"""TrainState, and `create_state`: the one way every training task makes a fresh state (or its abstract shapes).

TrainState holds everything a run needs to continue exactly after a crash: params (the task's tree, e.g.
{'encoder', 'head'} or {'encoder', 'decoder'}), the optimizer state, and for contrastive tuning the head's BatchNorm
statistics (`batch_stats`), the EMA target projector (`ema_params`, `ema_batch_stats`; empty dicts when unused) and
the NNCLR queue (K × D unit rows, their sample ids (−1 = empty), labels (−1 = unknown; only for the neighbours'
label accuracy) and FIFO pointer). All of it is saved by orbax and restored on resume.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from flax.training import train_state

from uamix_jax.schedules import lr_schedule
from uamix_jax.train import optim


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

        `grads` is the params tree, with None on frozen leaves (`optim.split_trainable`'s trainable half, so the
        path-keyed trainable mask is the one place that says what trains) or complete when everything trains.
        Frozen parameters are carried over untouched (bitwise), not updated by a zero step (x + 0.0 would flip −0.0
        to +0.0).
        """
        is_none = lambda x: x is None  # noqa: E731
        full = jax.tree.map(lambda g, p: jnp.zeros_like(p) if g is None else g, grads, self.params, is_leaf=is_none)
        updates, opt_state = self.tx.update(full, self.opt_state, self.params)
        params = jax.tree.map(lambda g, p, u: p if g is None else p + u, grads, self.params, updates, is_leaf=is_none)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **changes)


def ema_update(target: Any, online: Any, momentum: float) -> Any:
    """θ_t ← m·θ_t + (1 − m)·θ (MAE-CT's target projector)."""
    return jax.tree.map(lambda t, o: momentum * t + (1.0 - momentum) * o, target, online)


StateInit = Callable[[jax.Array], dict[str, Any]]


def create_state(config: ml_collections.ConfigDict, init: StateInit, groups: optim.Groups, total_steps: int,
                 key: jax.Array, *, abstract: bool = False) -> tuple[TrainState, Any]:
    """(fresh TrainState, optimizer label tree) for any training task.

    `init(key)` returns the TrainState fields the task owns: `params` and, for tuning, batch_stats, ema_params,
    ema_batch_stats and the queue fields. The optimizer is AdamW per label of `groups` (frozen labels: no update, no
    state) under the config's schedule (`uamix_jax.schedules.lr_schedule`). abstract=True returns the state as
    jax.ShapeDtypeStruct leaves from `jax.eval_shape`, allocating nothing (planners, benchmarks, restore
    templates); else the state is computed under jit on the default device and the assignment of parameters to
    optimizer groups is logged.
    """
    params_shape = jax.eval_shape(init, key)["params"]
    labels = optim.label_params(params_shape, groups.rules)
    o = config.optim
    tx = optim.make_optimizer(params_shape, labels=labels, groups=groups.groups,
                              schedule=lr_schedule(o, config.train.global_batch, total_steps),
                              b1=o.b1, b2=o.b2, eps=o.eps)

    def build(k: jax.Array) -> TrainState:
        return TrainState.create(apply_fn=None, tx=tx, **init(k))

    if abstract:
        return jax.eval_shape(build, key), labels
    state = jax.jit(build)(key)
    optim.log_assignment(state.params, labels, groups.scales)
    mask = optim.trainable_mask(labels)
    logging.info("trainable parameters: %s of %s", f"{optim.count_params(state.params, mask):,}",
                 f"{optim.count_params(state.params):,}")
    return state, labels
