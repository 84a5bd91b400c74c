"""AudioMAE's fixed 2-D sin-cos positional tables, for any input length.

AudioMAE builds its table with `get_2d_sincos_pos_embed_flexible(D, patch_hw)` where `patch_hw` is the *swapped*
grid (F/16, T/16) = (8, 64) for a (1024, 128) input (docs/method.md, "Positional tables"). Its meshgrid puts the second grid
axis first, so row n of the (cls-less) table encodes

    first D/2 dims:  n mod (T/16)      second D/2 dims:  n div (T/16)

while the token n of the patch grid sits at time t = n div 8, frequency f = n mod 8. The code is bijective but not
aligned with (time, frequency); the checkpoints were trained with it, so we reproduce it rather than "fix" it.

Two policies for inputs other than the pretraining length (docs/method.md, "Positional tables"):
- ``'audiomae'``: the table built on the (F/16, T/16) grid, as AudioMAE's fine-tuning does for shorter inputs
  (its `interpolate_pos_embed_audio` crops the (8, 64) grid to (8, T/16), which gives the same table);
- ``'prefix'``: the first 1 + (F/16)(T/16) rows of the pretraining-length table, so every token keeps the code it
  had in pretraining (default for frozen use, tuning and few-shot).
At the pretraining length both are the checkpoint's table. Values are computed in float64 and cast to float32,
as AudioMAE does (numpy float64 table copied into a float32 parameter).
"""
from __future__ import annotations

import functools

import numpy as np

POSEMB_POLICIES = ("prefix", "audiomae")
PRETRAIN_LENGTH = 1024  # AudioMAE's pretraining input: 1024 frames = 10.24 s at a 10 ms hop


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """1-D sin-cos code: [sin(p ω_k) for k] ++ [cos(p ω_k) for k], ω_k = 10000^(-k/(dim/2)), k < dim/2.

    positions: [N] (any real dtype); returns float64 [N, dim], all sines first, then all cosines.
    """
    if dim % 2:
        raise ValueError(f"sin-cos code width must be even, got {dim}")
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000.0**omega
    angles = np.asarray(positions, np.float64).reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def audiomae_grid_table(width: int, grid_hw: tuple[int, int]) -> np.ndarray:
    """AudioMAE's `get_2d_sincos_pos_embed_flexible(width, grid_hw, cls_token=True)`, float64 [1 + H*W, width].

    grid_hw = (H, W) is AudioMAE's `patch_hw`, i.e. (F/16, T/16) — swapped relative to the token grid. Row 1 + n
    encodes (n mod W) in its first half and (n div W) in its second half; row 0 (cls) is zero.
    """
    if width % 4:
        raise ValueError(f"2-D sin-cos table needs width divisible by 4, got {width}")
    h, w = grid_hw
    n = np.arange(h * w)
    table = np.concatenate([sincos_1d(width // 2, n % w), sincos_1d(width // 2, n // w)], axis=1)
    return np.concatenate([np.zeros((1, width)), table], axis=0)


@functools.lru_cache(maxsize=32)
def _cached_table(width: int, target_length: int, num_mel_bins: int, patch_size: int, policy: str,
                  pretrain_length: int) -> np.ndarray:
    n_freq = num_mel_bins // patch_size
    n_time = target_length // patch_size
    if policy == "audiomae":
        table = audiomae_grid_table(width, (n_freq, n_time))
    else:
        full = audiomae_grid_table(width, (n_freq, pretrain_length // patch_size))
        table = full[: 1 + n_freq * n_time]
    table = table.astype(np.float32)
    table.setflags(write=False)  # shared through the cache: callers must not mutate it
    return table


def positional_table(
    width: int,
    target_length: int,
    *,
    num_mel_bins: int = 128,
    patch_size: int = 16,
    policy: str = "prefix",
    pretrain_length: int = PRETRAIN_LENGTH,
) -> np.ndarray:
    """The fixed positional table for a [T, F] = [target_length, num_mel_bins] input, float32 [1 + (T/p)(F/p), width].

    Row 0 (cls) is zero; row 1 + n belongs to patch token n = (F/p) t + f. `policy` is ``'prefix'`` (the first rows
    of the `pretrain_length` table; needs target_length ≤ pretrain_length) or ``'audiomae'`` (the table built on the
    (F/p, T/p) grid). The returned array is read-only and shared.
    """
    if policy not in POSEMB_POLICIES:
        raise ValueError(f"posemb policy must be one of {POSEMB_POLICIES}, got {policy!r}")
    for name, value in (("target_length", target_length), ("num_mel_bins", num_mel_bins),
                        ("pretrain_length", pretrain_length)):
        if value <= 0 or value % patch_size:
            raise ValueError(f"{name}={value} must be a positive multiple of the patch size {patch_size}")
    if policy == "prefix" and target_length > pretrain_length:
        raise ValueError(
            f"posemb='prefix' takes the first rows of the {pretrain_length}-frame table, so it cannot serve "
            f"target_length={target_length}; use posemb='audiomae' for inputs longer than the pretraining length")
    return _cached_table(int(width), int(target_length), int(num_mel_bins), int(patch_size), policy,
                         int(pretrain_length))
