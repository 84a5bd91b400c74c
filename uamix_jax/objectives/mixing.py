"""T-CutMix (the paper's Eq. 2-3) and the ablation mixers, on fbank batches x [B, T, F].

Every mixer mixes one *mix group*: one λ ~ Beta(α, α) and one box per call, partner perm = the group reversed,
m_i = M ⊙ x_i + (1 − M) ⊙ x_perm(i) with M = 0 inside the box. It returns (mixed, lam, perm) where lam is the
fraction of x_i that is kept, the label weight of Eq. 3 (soft targets Y[i, i] = lam, Y[i, perm(i)] = 1 − lam).

Integer boxes (all mixers that cut): the box size is rounded to the nearest frame/bin (`jnp.round`, half to even),
the start is s = ⌊u · T⌋ with u ~ U[0, 1), and the box covers [s, min(s + w, T)). lam is computed from the clipped
integer box, so it equals the fraction of unmasked entries of M exactly (up to float32 rounding of the quotient).

`mix_groups` mixes a batch of several groups; group g's key is fold_in(key, first_group_index + g), so a device
holding groups first_group_index, first_group_index + 1, ... mixes exactly as one device holding the whole global
batch would (docs/method.md, "Device-count invariance").
"""
from __future__ import annotations

from typing import Callable, Literal

import chex
import jax
import jax.numpy as jnp

MixResult = tuple[jax.Array, jax.Array, jax.Array]
Width = Literal["sqrt", "linear"]


def sample_lambda(key: jax.Array, alpha: float, shape: tuple[int, ...] = ()) -> jax.Array:
    """λ ~ Beta(α, α), float32 of `shape` (the mixing coefficient of CutMix/MixUp; α = 1 is uniform on [0, 1])."""
    if isinstance(alpha, (int, float)) and not alpha > 0:
        raise ValueError(f"mixing alpha must be > 0 (Beta(α, α) is undefined otherwise), got alpha={alpha}")
    return jax.random.beta(key, alpha, alpha, shape, dtype=jnp.float32)


def _check_batch(x: jax.Array, name: str) -> None:
    chex.assert_rank(x, 3)
    chex.assert_type(x, float)
    if x.shape[0] < 1:
        raise ValueError(f"{name}: x must be [B, T, F] with B >= 1, got shape {x.shape}")


def _reversed(batch: int) -> jax.Array:
    return jnp.arange(batch - 1, -1, -1, dtype=jnp.int32)


def _cut_fraction(lam: jax.Array, width: Width) -> jax.Array:
    if width == "sqrt":  # the paper's T·√(1 − λ): 2-D CutMix's side formula applied to a 1-D box
        return jnp.sqrt(1.0 - lam)
    if width == "linear":
        return 1.0 - lam
    raise ValueError(f"width must be 'sqrt' (the paper's T·√(1−λ)) or 'linear' (T·(1−λ)), got {width!r}")


def _interval(key: jax.Array, length: int, cut: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """An integer interval [start, end) of nominal size round(cut · length), start ~ U{0..length−1}, clipped."""
    size = jnp.round(cut * length).astype(jnp.int32)
    start = jnp.floor(jax.random.uniform(key, (), jnp.float32) * length).astype(jnp.int32)
    start = jnp.minimum(start, length - 1)  # guards u·length rounding up to `length` in float32
    end = jnp.minimum(start + size, length)
    inside = (jnp.arange(length) >= start) & (jnp.arange(length) < end)
    return inside, start, end


def t_cutmix(key: jax.Array, x: jax.Array, alpha: float = 1.0, *, width: Width = "sqrt") -> MixResult:
    """T-CutMix of one mix group (Eq. 2): a full-height time box of width T·√(1−λ) taken from the reversed batch.

    x [B, T, F] → (mixed [B, T, F] (x's dtype), lam [] float32 = 1 − clipped width / T, perm [B] int32 reversed).
    λ ~ Beta(α, α); `width='linear'` uses T·(1−λ). Inside frames [s, min(s + w, T)) row i holds x[perm[i]].
    """
    _check_batch(x, "t_cutmix")
    t = x.shape[1]
    k_lam, k_box = jax.random.split(key)
    lam0 = sample_lambda(k_lam, alpha)
    inside, start, end = _interval(k_box, t, _cut_fraction(lam0, width))
    perm = _reversed(x.shape[0])
    mixed = jnp.where(inside[None, :, None], x[perm], x)
    lam = 1.0 - (end - start).astype(jnp.float32) / t
    return mixed, lam, perm


def tf_cutmix(key: jax.Array, x: jax.Array, alpha: float = 1.0) -> MixResult:
    """TF-CutMix of one mix group (the paper's Fig. 5 ablation): a time × frequency box, T·√(1−λ) by F·√(1−λ).

    x [B, T, F] → (mixed, lam [] float32 = 1 − clipped box area / (T·F), perm [B] int32 reversed). Both starts are
    uniform (s_t ~ U{0..T−1}, s_f ~ U{0..F−1}) and the box is clipped to the spectrogram.
    """
    _check_batch(x, "tf_cutmix")
    t, f = x.shape[1], x.shape[2]
    k_lam, k_t, k_f = jax.random.split(key, 3)
    cut = jnp.sqrt(1.0 - sample_lambda(k_lam, alpha))
    in_t, s_t, e_t = _interval(k_t, t, cut)
    in_f, s_f, e_f = _interval(k_f, f, cut)
    perm = _reversed(x.shape[0])
    mixed = jnp.where((in_t[:, None] & in_f[None, :])[None], x[perm], x)
    area = ((e_t - s_t) * (e_f - s_f)).astype(jnp.float32)
    lam = 1.0 - area / (t * f)
    return mixed, lam, perm


def mixup(key: jax.Array, x: jax.Array, alpha: float = 1.0) -> MixResult:
    """MixUp of one mix group (the paper's "MixUp + LS" ablation): m_i = λ x_i + (1 − λ) x_perm(i).

    x [B, T, F] → (mixed (x's dtype, computed in float32), lam [] float32 = λ ~ Beta(α, α), perm [B] int32 reversed).
    """
    _check_batch(x, "mixup")
    lam = sample_lambda(key, alpha)
    perm = _reversed(x.shape[0])
    x32 = x.astype(jnp.float32)
    mixed = lam * x32 + (1.0 - lam) * x32[perm]
    return mixed.astype(x.dtype), lam, perm


_MIXERS: dict[str, Callable[..., MixResult]] = {"t_cutmix": t_cutmix, "tf_cutmix": tf_cutmix, "mixup": mixup}


def mix_groups(
    key: jax.Array,
    x: jax.Array,
    *,
    group_size: int,
    method: Literal["t_cutmix", "tf_cutmix", "mixup", "none"] = "t_cutmix",
    alpha: float = 1.0,
    first_group_index: int | jax.Array = 0,
    width: Width = "sqrt",
) -> MixResult:
    """Mixes x [B, T, F] group by group: consecutive groups of `group_size` rows, each with its own λ and box.

    Returns (mixed [B, T, F], lam [B] float32 (each row's group λ), perm [B] int32 indices into x: the reversal
    within each group). Group g (0-based within x) uses key fold_in(key, first_group_index + g); inside shard_map pass
    `first_group_index = axis_index * (B_local // group_size)` to reproduce the single-device global-batch mix.
    `method='none'` returns (x, ones, arange).
    """
    _check_batch(x, "mix_groups")
    batch = x.shape[0]
    if group_size < 1 or batch % group_size:
        raise ValueError(
            f"mix_groups: batch size {batch} (x.shape={x.shape}) must be a positive multiple of group_size="
            f"{group_size}; set the mix group size (config mix_group) to a divisor of the per-device batch"
        )
    if method == "none":
        return x, jnp.ones((batch,), jnp.float32), jnp.arange(batch, dtype=jnp.int32)
    if method not in _MIXERS:
        raise ValueError(f"mix_groups: unknown method {method!r}; use one of {sorted(_MIXERS) + ['none']}")
    if method == "t_cutmix":
        mixer = lambda k, xg: t_cutmix(k, xg, alpha, width=width)  # noqa: E731
    else:
        mixer = lambda k, xg: _MIXERS[method](k, xg, alpha)  # noqa: E731
    n_groups = batch // group_size
    group_ids = jnp.asarray(first_group_index, jnp.int32) + jnp.arange(n_groups, dtype=jnp.int32)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, group_ids)
    xg = x.reshape((n_groups, group_size) + x.shape[1:])
    mixed, lam_g, perm_g = jax.vmap(mixer)(keys, xg)
    offsets = jnp.arange(n_groups, dtype=jnp.int32)[:, None] * group_size
    return (
        mixed.reshape(x.shape),
        jnp.repeat(lam_g, group_size),
        (perm_g + offsets).reshape(batch).astype(jnp.int32),
    )
