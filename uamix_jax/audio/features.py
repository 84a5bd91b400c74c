"""AudioMAE's input: waveform -> mean removal -> Kaldi fbank -> pad/crop to `target_length` -> normalisation.

AudioMAE (`dataset.py:_wav2fbank`, `__getitem__`) computes, for one 16 kHz clip w,

    fbank = kaldi.fbank(w - mean(w))               [1 + (N - 400) // 160, 128]
    fbank = zero-pad at the end, or keep the first target_length frames
    x     = (fbank - mean_ds) / (2 * std_ds)

The functions here do the same on a zero-padded batch [B, N] with true lengths [B], in one jittable call.
"""
from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import Union

import chex
import jax
import jax.numpy as jnp
import numpy as np

from uamix_jax.audio import fbank as _fbank
from uamix_jax.audio.fbank import FRAME_LENGTH, FRAME_SHIFT, SAMPLE_RATE

# (mean, std) of AudioMAE's fbank per dataset (AudioMAE's dataset.py / main_finetune_*.py); AudioSet's is also
# what AudioMAE uses for k400.
DATASET_STATS: dict[str, tuple[float, float]] = {
    "audioset": (-4.2677393, 4.5689974),
    "esc50": (-6.6268077, 5.358466),
    "speechcommands": (-6.845978, 5.5654526),
}

Stats = Union[str, Sequence[float]]

NUM_MEL_BINS = 128


def resolve_stats(stats: Stats) -> tuple[float, float]:
    """Normalisation statistics (mean, std) from a DATASET_STATS name ('audioset', ...) or a (mean, std) pair.

    The one place that reads `config.data.stats`-style values: raises ValueError for an unknown name, a value that
    is not a pair of numbers, or a std that is not finite and positive (the normalisation divides by 2 std).
    """
    if isinstance(stats, str):
        if stats not in DATASET_STATS:
            raise ValueError(f"unknown normalisation stats {stats!r} (config.data.stats); use one of "
                             f"{sorted(DATASET_STATS)} or a (mean, std) pair")
        return DATASET_STATS[stats]
    try:
        mean, std = (float(v) for v in stats)
    except (TypeError, ValueError) as e:
        raise ValueError(f"normalisation stats (config.data.stats) must be a name in {sorted(DATASET_STATS)} or a "
                         f"(mean, std) pair of numbers, got {stats!r}") from e
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"normalisation stats (config.data.stats) need a finite mean and a finite std > 0, got "
                         f"(mean, std) = ({mean}, {std}); compute them over the training set's fbanks")
    return mean, std


def n_valid_frames(length: jax.Array | np.ndarray, num_frames: int | None = None) -> jax.Array:
    """Frames that lie entirely inside the first `length` samples: max(0, 1 + (length - 400) // 160), int32
    (FRAME_LENGTH = 400, FRAME_SHIFT = 160).

    Capped at `num_frames` (the frame count of the padded array) when given.
    """
    length = jnp.asarray(length, jnp.int32)
    n = jnp.maximum(0, 1 + (length - FRAME_LENGTH) // FRAME_SHIFT)
    return n if num_frames is None else jnp.minimum(n, num_frames)


def waveform_to_fbank(waveform: jax.Array | np.ndarray,
                      length: jax.Array | np.ndarray | None = None) -> tuple[jax.Array, jax.Array]:
    """AudioMAE's `_wav2fbank` on a zero-padded batch: per clip, fbank(w - mean(w valid)), invalid frames zeroed.

    Args:
      waveform: float [B, N] 16 kHz mono samples, clip b valid in [0, length[b]) and zero padding after; N >= 400.
      length: int [B] valid samples per clip (None: all N samples are valid).

    Returns:
      fbank float32 [B, 1 + (N - 400) // 160, 128], where every frame not entirely inside the valid samples is
      exactly 0.0 (so clip b equals AudioMAE's fbank of w[b, :length[b]] followed by zero frames), and
      n_valid_frames int32 [B] = max(0, 1 + (length - 400) // 160).
    """
    waveform = jnp.asarray(waveform)
    chex.assert_rank(waveform, 2)
    if not jnp.issubdtype(waveform.dtype, jnp.floating):
        raise TypeError(f"waveform_to_fbank: waveform must be floating point [B, N], got {waveform.dtype}")
    batch, num_samples = waveform.shape
    if length is None:
        length = jnp.full((batch,), num_samples, jnp.int32)
    length = jnp.asarray(length)
    chex.assert_shape(length, (batch,))
    if not jnp.issubdtype(length.dtype, jnp.integer):
        raise TypeError(f"waveform_to_fbank: length must be an integer array [B], got {length.dtype}")
    length = jnp.clip(length.astype(jnp.int32), 0, num_samples)

    x = waveform.astype(jnp.float32)
    valid = jnp.arange(num_samples, dtype=jnp.int32)[None, :] < length[:, None]
    # the mean of the valid samples only, as AudioMAE sees the unpadded clip
    mean = jnp.sum(jnp.where(valid, x, 0.0), axis=1) / jnp.maximum(length, 1).astype(jnp.float32)
    return _masked_fbank(jnp.where(valid, x - mean[:, None], 0.0), length)


def _masked_fbank(centred: jax.Array, length: jax.Array) -> tuple[jax.Array, jax.Array]:
    """kaldi_fbank of already mean-free clips [B, N], with the frames beyond `length` [B] set to 0.0."""
    fbank = _fbank.kaldi_fbank(centred, num_mel_bins=NUM_MEL_BINS)
    n_valid = n_valid_frames(length, fbank.shape[1])
    keep = jnp.arange(fbank.shape[1], dtype=jnp.int32)[None, :] < n_valid[:, None]
    return jnp.where(keep[..., None], fbank, 0.0), n_valid


def pad_or_crop_frames(fbank: jax.Array | np.ndarray, target_length: int) -> jax.Array:
    """[..., T_in, F] -> [..., target_length, F]: zero frames appended at the end, or the first target_length kept."""
    fbank = jnp.asarray(fbank)
    if fbank.ndim < 2:
        raise ValueError(f"pad_or_crop_frames: fbank must be [..., frames, bins], got shape {fbank.shape}")
    if target_length < 1:
        raise ValueError(f"pad_or_crop_frames: target_length must be >= 1, got {target_length}")
    t_in = fbank.shape[-2]
    if t_in >= target_length:
        return fbank[..., :target_length, :]
    pad = [(0, 0)] * (fbank.ndim - 2) + [(0, target_length - t_in), (0, 0)]
    return jnp.pad(fbank, pad)


def normalize_fbank(fbank: jax.Array | np.ndarray, mean: float, std: float) -> jax.Array:
    """AudioMAE's normalisation (x - mean) / (2 std), elementwise on any shape."""
    if isinstance(std, (int, float)) and not std > 0:
        raise ValueError(f"normalize_fbank: std must be positive, got {std}")
    return (jnp.asarray(fbank) - mean) / (2.0 * std)


def audiomae_features(waveform: jax.Array | np.ndarray, length: jax.Array | np.ndarray | None = None, *,
                      target_length: int = 1024, stats: Stats = "audioset") -> jax.Array:
    """The AudioMAE encoder's input for a zero-padded batch of 16 kHz clips.

    normalize_fbank(pad_or_crop_frames(waveform_to_fbank(waveform, length)[0], target_length), *stats).

    Args:
      waveform: float [B, N], N >= 400; length: int [B] valid samples (None: all).
      target_length: frames of the output (1024 AudioSet, 512 ESC-50, 128 SpeechCommands in AudioMAE).
      stats: a key of DATASET_STATS or (mean, std). Must be static under jit.

    Returns:
      float32 [B, target_length, 128]; padded frames hold -mean / (2 std), as in AudioMAE.
    """
    mean, std = resolve_stats(stats)
    fbank, _ = waveform_to_fbank(waveform, length)
    return normalize_fbank(pad_or_crop_frames(fbank, target_length), mean, std)


def load_audiomae_input(path: str | os.PathLike, *, target_length: int = 1024,
                        stats: Stats = "audioset") -> np.ndarray:
    """The whole AudioMAE input of one audio file: float32 [target_length, 128].

    load_audio (16 kHz mono) then audiomae_features: the same numbers as AudioMAE's `_wav2fbank` + padding/cropping +
    normalisation of the file. A clip shorter than one frame (400 samples) gives padding frames only.
    """
    mean, std = resolve_stats(stats)
    from uamix_jax.audio.io import load_audio  # here: the jitted features need no soundfile (e.g. on a GPU box)

    wave = load_audio(path, sample_rate=SAMPLE_RATE)
    # Remove the whole clip's mean here, then cut the clip to exactly the samples that target_length frames read:
    # the output is the same as AudioMAE's, and every file of any length reuses one compiled function.
    wave = wave - np.mean(wave, dtype=np.float64).astype(np.float32)
    num_samples = _fbank.frames_to_samples(target_length)
    length = min(wave.shape[0], num_samples)
    window = np.zeros((1, num_samples), np.float32)
    window[0, :length] = wave[:length]
    features = _centred_features(window, np.array([length], np.int32), target_length=target_length, mean=mean,
                                 std=std)
    return np.asarray(features[0])


@functools.partial(jax.jit, static_argnames=("target_length", "mean", "std"))
def _centred_features(centred: jax.Array, length: jax.Array, *, target_length: int, mean: float,
                      std: float) -> jax.Array:
    fbank, _ = _masked_fbank(centred, length)
    return normalize_fbank(pad_or_crop_frames(fbank, target_length), mean, std)
