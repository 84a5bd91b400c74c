"""The learning rate of every training run, derived in one place from a config's `optim` block.

    peak   = optim.base_lr · global_batch / 256   if optim.base_lr > 0 (AudioMAE's rule)   else optim.lr
    W      = min(round(optim.warmup_fraction · S), S − 1)      warmup steps of S in all (at least 0)
    'mae_ct'   (MAE-CT):   lr(s) = peak · (s + 1) / (W + 1)                               for s < W
    'audiomae' (AudioMAE): lr(s) = peak · s / W                                           for s < W
    both, after warmup:    lr(s) = min_lr + (peak − min_lr) · ½ (1 + cos(π (s − W) / (S − W)))

The trainer, the optimizers of every task and the linear probe read their rate from here, so a config's effective
peak, warmup and shape cannot differ between what runs and what is recorded in `config.json`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("mae_ct", "audiomae")
BATCH_REFERENCE = 256  # AudioMAE and MAE state base rates per 256 samples


def peak_lr(optim: Mapping[str, Any], global_batch: int) -> float:
    """optim.base_lr · global_batch / 256 when base_lr > 0, else optim.lr (module docstring)."""
    base = float(optim.get("base_lr", 0.0) or 0.0)
    if base < 0 or float(optim["lr"]) < 0:
        raise ValueError(f"config.optim.lr and base_lr must be non-negative, got {optim['lr']}, {base}")
    return base * global_batch / BATCH_REFERENCE if base > 0 else float(optim["lr"])


def warmup_steps(optim: Mapping[str, Any], total_steps: int) -> int:
    """round(optim.warmup_fraction · total_steps), at most total_steps − 1 and at least 0."""
    fraction = float(optim["warmup_fraction"])
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"config.optim.warmup_fraction must lie in [0, 1), got {fraction}")
    return max(0, min(int(round(fraction * total_steps)), total_steps - 1))


def warmup_cosine(peak: float, total_steps: int, warmup: int, *, min_lr: float = 0.0,
                  shape: str = "mae_ct") -> optax.Schedule:
    """The schedule of the module docstring as a jittable function of the (0-based) step."""
    if shape not in SCHEDULES:
        raise ValueError(f"config.optim.schedule must be one of {SCHEDULES}, got {shape!r}")
    cosine_steps = max(total_steps - warmup, 1)

    def schedule(step: jax.Array) -> jax.Array:
        s = jnp.asarray(step, jnp.float32)
        if shape == "mae_ct":
            warm = peak * (s + 1.0) / (warmup + 1.0)
        else:
            warm = peak * s / max(warmup, 1)
        decay = min_lr + (peak - min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * jnp.clip(s - warmup, 0, cosine_steps)
                                                                / cosine_steps))
        return jnp.where(s < warmup, warm, decay)

    return schedule


def lr_schedule(optim: Mapping[str, Any], global_batch: int, total_steps: int) -> optax.Schedule:
    """The config's schedule: peak from `peak_lr`, warmup from `warmup_steps`, shape optim.schedule."""
    return warmup_cosine(peak_lr(optim, global_batch), total_steps, warmup_steps(optim, total_steps),
                         min_lr=float(optim.get("min_lr", 0.0)), shape=optim.get("schedule", "mae_ct"))
