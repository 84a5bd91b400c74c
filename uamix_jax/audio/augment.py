"""View augmentations on device (docs/method.md, "Positive-pair augmentation"), jittable with static shapes.

Per view, independently, on a raw Kaldi log-mel fbank [T_in, F] whose frames past `n_valid` are 0.0:
  1. time crop to L = target_length frames: a uniform start in [0, n_valid - L] when n_valid > L, else the first L
     frames (zero padded);
  2. gain: g ~ U(lo, hi) (tuning's choice), or g = lo + (hi − lo)·Beta(b, b) with gain_beta = b > 0 (AudioMAE's
     roll_mag_aug for pretraining and fine-tuning: 0.5 + Beta(10, 10)), scales the power spectrum by g², so on
     the valid frames x ← max(x + 2 ln g, ln ε), except
     that bins at the energy floor ln ε (ε = float32 eps; digital silence, and mel channel 3 of 128 at 16 kHz, which
     covers no FFT bin) stay at ln ε: their energy is 0 (or unknown below ε), and a gain leaves 0 at the floor;
  3. SpecAugment as AudioMAE: one frequency mask, width ~ U{0..freq_mask}, and one time mask, width
     ~ U{0..round(time_mask * L / 1024)}, each at a uniform start, set to 0 in the log domain;
  4. normalise (x - mean) / (2 std).
Padded and masked cells are 0 before normalisation, hence exactly -mean / (2 std) after, as in AudioMAE.

Randomness is keyed by sample, never by device: sample s of the global batch uses fold_in(key, sample_index[s]),
then fold_in(., 0) for view a and fold_in(., 1) for view b, so the views of a sample do not depend on how the
batch is split over devices.
"""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

from uamix_jax.audio.fbank import ENERGY_FLOOR
from uamix_jax.audio.features import Stats, normalize_fbank, resolve_stats

LOG_FLOOR = math.log(ENERGY_FLOOR)  # ln ε ≈ -15.942385, the value of a floored fbank bin
# A bin within this of ln ε counts as floored: XLA's and numpy's float32 log may differ in the last bit.
_FLOOR_TOLERANCE = 1e-4


def scaled_time_mask(time_mask: int, target_length: int) -> int:
    """Maximum time-mask width at `target_length` frames: time_mask is given for T = 1024 (AudioMAE's 192)."""
    return int(round(time_mask * target_length / 1024))


def _crop_first(fbank: jax.Array, n_valid: jax.Array, target_length: int) -> tuple[jax.Array, jax.Array]:
    """First target_length frames, zero padded, frames past n_valid zeroed; returns (x [L, F], valid rows [L])."""
    t_in = fbank.shape[0]
    x = fbank[:target_length] if t_in >= target_length else jnp.pad(fbank, ((0, target_length - t_in), (0, 0)))
    rows = jnp.arange(target_length) < jnp.minimum(n_valid, target_length)
    return jnp.where(rows[:, None], x, 0.0), rows


def augment_view(key: jax.Array, fbank: jax.Array, n_valid_frames: jax.Array, *, target_length: int,
                 gain: tuple[float, float] | None = (0.5, 1.5), freq_mask: int = 48, time_mask: int = 192,
                 stats: Stats = "audioset", gain_beta: float = 0.0) -> jax.Array:
    """One augmented, normalised view [target_length, F] of a raw log-mel fbank [T_in, F] (steps 1-4 above).

    n_valid_frames: int scalar, the frames of `fbank` that hold audio. gain=None, freq_mask=0, time_mask=0 turn the
    corresponding step off; gain_beta > 0 draws the gain from the scaled Beta instead of the uniform; stats: a key
    of DATASET_STATS or (mean, std) (`resolve_stats`).
    """
    chex.assert_rank(fbank, 2)
    chex.assert_rank(n_valid_frames, 0)
    chex.assert_type(n_valid_frames, int)
    if target_length < 1:
        raise ValueError(f"augment_view: target_length must be >= 1, got {target_length}")
    mean, std = resolve_stats(stats)
    t_in, n_bins = fbank.shape
    fbank = fbank.astype(jnp.float32)
    n_valid = jnp.clip(n_valid_frames.astype(jnp.int32), 0, t_in)
    k_crop, k_gain, k_fw, k_fs, k_tw, k_ts = jax.random.split(key, 6)

    # 1. crop: pad first so dynamic_slice always has target_length rows to take
    padded = fbank if t_in >= target_length else jnp.pad(fbank, ((0, target_length - t_in), (0, 0)))
    start = jax.random.randint(k_crop, (), 0, jnp.maximum(n_valid - target_length, 0) + 1)
    x = jax.lax.dynamic_slice(padded, (start, 0), (target_length, n_bins))
    rows = jnp.arange(target_length) < jnp.minimum(n_valid, target_length)
    x = jnp.where(rows[:, None], x, 0.0)

    # 2. gain on valid frames only (padding must stay 0 so it normalises to the pad value), floored bins unchanged
    if gain is not None:
        if gain_beta > 0:
            g = gain[0] + (gain[1] - gain[0]) * jax.random.beta(k_gain, gain_beta, gain_beta)
        else:
            g = jax.random.uniform(k_gain, (), minval=gain[0], maxval=gain[1])
        floored = x <= LOG_FLOOR + _FLOOR_TOLERANCE
        gained = jnp.where(floored, x, jnp.maximum(x + 2.0 * jnp.log(g), LOG_FLOOR))
        x = jnp.where(rows[:, None], gained, 0.0)

    # 3. one frequency and one time mask
    f_max = min(freq_mask, n_bins)
    f_width = jax.random.randint(k_fw, (), 0, f_max + 1)
    f_start = jax.random.randint(k_fs, (), 0, n_bins - f_width + 1)
    bins = jnp.arange(n_bins)
    f_masked = (bins >= f_start) & (bins < f_start + f_width)
    t_max = min(scaled_time_mask(time_mask, target_length), target_length)
    t_width = jax.random.randint(k_tw, (), 0, t_max + 1)
    t_start = jax.random.randint(k_ts, (), 0, target_length - t_width + 1)
    frames = jnp.arange(target_length)
    t_masked = (frames >= t_start) & (frames < t_start + t_width)
    x = jnp.where(f_masked[None, :] | t_masked[:, None], 0.0, x)

    return normalize_fbank(x, mean, std)


def make_views(key: jax.Array, fbank: jax.Array, n_valid_frames: jax.Array, sample_index: jax.Array, *,
               target_length: int, gain: tuple[float, float] | None = (0.5, 1.5), freq_mask: int = 48,
               time_mask: int = 192, stats: Stats = "audioset") -> tuple[jax.Array, jax.Array]:
    """(view_a, view_b), each [B, target_length, F], from fbank [B, T_in, F], n_valid_frames [B] and
    sample_index [B] (each sample's position in the global batch); vmapped, keyed per sample (module doc)."""
    chex.assert_rank(fbank, 3)
    chex.assert_shape([n_valid_frames, sample_index], (fbank.shape[0],))
    chex.assert_type([n_valid_frames, sample_index], int)
    options = dict(target_length=target_length, gain=gain, freq_mask=freq_mask, time_mask=time_mask, stats=stats)

    def views(index: jax.Array, fb: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array]:
        sample_key = jax.random.fold_in(key, index)
        return (augment_view(jax.random.fold_in(sample_key, 0), fb, n, **options),
                augment_view(jax.random.fold_in(sample_key, 1), fb, n, **options))

    return jax.vmap(views)(sample_index, fbank, n_valid_frames)


def eval_view(fbank: jax.Array, n_valid_frames: jax.Array, target_length: int, stats: Stats = "audioset") -> jax.Array:
    """The evaluation input: first target_length frames (zero padded; frames past n_valid zeroed), normalised.

    fbank [T_in, F] with a scalar n_valid_frames, or a batch [B, T_in, F] with n_valid_frames [B].
    """
    chex.assert_type(n_valid_frames, int)
    mean, std = resolve_stats(stats)
    if fbank.ndim == 3:
        chex.assert_shape(n_valid_frames, (fbank.shape[0],))
        return jax.vmap(lambda f, n: eval_view(f, n, target_length, stats))(fbank, n_valid_frames)
    chex.assert_rank([fbank, n_valid_frames], [2, 0])
    x, _ = _crop_first(fbank.astype(jnp.float32), jnp.asarray(n_valid_frames, jnp.int32), target_length)
    return normalize_fbank(x, mean, std)
