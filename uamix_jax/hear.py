"""The HEAR 2021 common API for uamix-jax encoders: `load_model`, `get_scene_embeddings`, `get_timestamp_embeddings`.

    import uamix_jax.hear as hear
    model = hear.load_model("W2")                    # anything load_encoder reads (module docstring of encoders.py)
    scene = hear.get_scene_embeddings(audio, model)  # audio: torch float [n_sounds, n_samples] at 16 kHz -> [n, D]
    emb, ts = hear.get_timestamp_embeddings(audio, model)   # [n, M, D] float32, [n, M] milliseconds

hear-eval-kit and the HEAR validator import this module by name (`uamix_jax.hear`, model file = the path). The
model is a `torch.nn.Module` because the API asks for one; it holds no torch parameters and the computation is JAX on
JAX's default device (`.to(device)` changes nothing; outputs are torch tensors on the input's device). This module
imports torch, so it is not among `uamix_jax`'s top-level exports.

Choices (T = the encoder's input frames, its `target_length`; p = 16-frame patches; N samples at 16 kHz):

- Features: AudioMAE's, as in training (`uamix_jax.audio.features.waveform_to_fbank`, `normalize_fbank`): Kaldi
  fbank (25 ms frames every 10 ms, 128 mel bins) normalised (x − mean) / (2 std) with the statistics the encoder was
  trained with (a training workdir's `data.stats`, else AudioSet's; `load_model(..., stats=...)` overrides). Each
  window's fbank is computed from its own samples: a Kaldi frame reads only its 400 samples and removes its own DC
  offset, so this equals the whole sound's fbank up to float rounding (AudioMAE's removal of the sound's mean first
  changes nothing else).
- Windows: a sound of n ≤ T frames is one window, padded as AudioMAE pads (zero fbank frames appended before the
  normalisation). A longer sound goes through windows of T frames starting every T/2 frames, K = 1 + ⌈(n − T)/(T/2)⌉
  of them, the last padded the same way; there is no cap on the length.
- Scene embedding: the encoder's pooled embedding of the window (its pooling: mean of the normed patch tokens, or
  fc_norm of their mean); beyond T the mean over the K windows' pooled embeddings.
- Timestamp embeddings: one per time patch (p = 16 frames, a 160 ms hop): the window's output patch tokens of that
  time patch averaged over its F/16 = 8 frequency patches. Time patch j reads samples [2560 j, 2560 j + 2800), so
  its timestamp is that span's centre, 160 j + 87.5 ms. Only patches whose centre lies inside the sound are
  returned, M = ⌊(N − 1400)/2560⌋ + 1 of them (a sound shorter than 87.5 ms gets one, stamped at its midpoint), so
  no timestamp lies past the sound's end. A patch covered by two windows takes its embedding from the one in which
  it lies most central (the earlier one on a tie).
- Compilation: features and encoder are one jitted function of a chunk of windows whose size is a power of two up
  to `window_batch`, so an encoder compiles at most log2(window_batch) + 1 times, whatever the lengths and batch
  sizes. Matmul precision is JAX's default (float32 on CPU; wrap calls in `jax.default_matmul_precision('highest')`
  for float32 matmuls on a TPU or GPU).
"""
from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from uamix_jax.audio.fbank import FRAME_LENGTH, FRAME_SHIFT, SAMPLE_RATE, frames_to_samples, num_frames
from uamix_jax.audio.features import (NUM_MEL_BINS, Stats, normalize_fbank, pad_or_crop_frames, resolve_stats,
                                      waveform_to_fbank)
from uamix_jax.evaluation.encoders import ACCEPTED, load_encoder
from uamix_jax.interop.workdir import is_training_workdir, read_workdir_config
from uamix_jax.models.vit import AudioMAEEncoder

__all__ = ["HearModel", "load_model", "get_scene_embeddings", "get_timestamp_embeddings", "num_windows",
           "num_timestamps", "patch_timestamps_ms", "most_central_window"]


def num_windows(n_frames: int, target_length: int) -> int:
    """K = 1 for n ≤ T frames, else 1 + ⌈(n − T)/(T/2)⌉: windows of T frames every T/2 frames covering all n."""
    if n_frames <= target_length:
        return 1
    hop = target_length // 2
    return 1 + -(-(n_frames - target_length) // hop)


def _patch_span(patch_size: int) -> tuple[int, int]:
    """(hop, length) in samples of a time patch: p frames every p·160 samples, reading (p − 1)·160 + 400 samples."""
    return patch_size * FRAME_SHIFT, (patch_size - 1) * FRAME_SHIFT + FRAME_LENGTH


def num_timestamps(num_samples: int, patch_size: int = 16) -> int:
    """M: the time patches whose centre lies inside N samples, ⌊(N − 1400)/2560⌋ + 1 for p = 16, at least 1."""
    hop, length = _patch_span(patch_size)
    if 2 * num_samples < length:
        return 1
    return (2 * num_samples - length) // (2 * hop) + 1


def patch_timestamps_ms(num_samples: int, patch_size: int = 16) -> np.ndarray:
    """float64 [M]: the centres of the first M time patches in ms, 160 j + 87.5 for p = 16 (the midpoint of a sound
    shorter than one centre)."""
    hop, length = _patch_span(patch_size)
    if num_samples < length / 2:
        return np.array([500.0 * num_samples / SAMPLE_RATE])
    j = np.arange(num_timestamps(num_samples, patch_size), dtype=np.float64)
    return (j * hop + length / 2) * 1000.0 / SAMPLE_RATE


def most_central_window(num_patches: int, patches_per_window: int, windows: int) -> tuple[np.ndarray, np.ndarray]:
    """For time patches j < M: (window k, patch index inside it) where |local + ½ − P/2| is smallest (earlier k on a
    tie), windows starting every P/2 patches. int [M] each."""
    p, hop = patches_per_window, patches_per_window // 2
    j = np.arange(num_patches)[:, None]
    local = j - hop * np.arange(windows)[None, :]
    distance = np.where((local >= 0) & (local < p), np.abs(local + 0.5 - p / 2), np.inf)
    k = np.argmin(distance, axis=1)  # the first minimum: the earlier window on a tie
    if not np.isfinite(distance[np.arange(num_patches), k]).all():
        raise ValueError(f"most_central_window: {num_patches} patches are not covered by {windows} windows of "
                         f"{p} patches")
    return k, local[np.arange(num_patches), k]


@functools.partial(jax.jit, static_argnames=("encoder", "mean", "std"))
def _embed_windows(variables: Any, waveform: jax.Array, length: jax.Array, *, encoder: AudioMAEEncoder, mean: float,
                   std: float) -> tuple[jax.Array, jax.Array]:
    """Windows of samples [C, S] (S = the samples of T frames; valid lengths [C], zero after) → (time-patch
    embeddings [C, T/p, D]: output patch tokens averaged over frequency, pooled embeddings [C, D])."""
    fbank, _ = waveform_to_fbank(waveform, length)
    x = normalize_fbank(pad_or_crop_frames(fbank, encoder.target_length), mean, std)
    tokens, pooled = encoder.apply(variables, x)
    p = encoder.patch_size
    patches = tokens[:, 1:].reshape(x.shape[0], encoder.target_length // p, encoder.num_mel_bins // p, encoder.width)
    return patches.mean(axis=2), pooled


class HearModel(torch.nn.Module):
    """A uamix-jax encoder behind the HEAR API: `sample_rate`, `scene_embedding_size`, `timestamp_embedding_size`
    (ints), the Flax `encoder` and its `variables`, the normalisation `stats` and the `window_batch` chunk size."""

    sample_rate: int = SAMPLE_RATE

    def __init__(self, encoder: AudioMAEEncoder, variables: Any, stats: tuple[float, float], *, window_batch: int = 16,
                 source: str = ""):
        super().__init__()
        if encoder.num_mel_bins != NUM_MEL_BINS:
            raise ValueError(f"{source}: the encoder takes {encoder.num_mel_bins} mel bins; the HEAR features have "
                             f"{NUM_MEL_BINS}")
        if encoder.target_length % (2 * encoder.patch_size):
            raise ValueError(f"{source}: T = {encoder.target_length} frames is not a multiple of "
                             f"{2 * encoder.patch_size}, so windows every T/2 frames would not start on a patch")
        if window_batch < 1:
            raise ValueError(f"window_batch must be >= 1, got {window_batch}")
        self.encoder = encoder
        self.variables = variables
        self.stats = (float(stats[0]), float(stats[1]))
        self.window_batch = int(window_batch)
        self.source = source
        self.scene_embedding_size = int(encoder.width)
        self.timestamp_embedding_size = int(encoder.width)

    def embed_windows(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(time-patch embeddings [B, K, T/p, D], pooled embeddings [B, K, D]) of float [B, N] sounds: windows of
        T frames every T/2 frames, frames past the sound zero before the normalisation (as AudioMAE pads)."""
        batch, num_samples = audio.shape
        t = self.encoder.target_length
        k = num_windows(num_frames(num_samples), t)
        window_samples, hop = frames_to_samples(t), (t // 2) * FRAME_SHIFT
        padded = np.zeros((batch, (k - 1) * hop + window_samples), np.float32)
        padded[:, :num_samples] = audio
        starts = hop * np.arange(k)
        lengths = np.clip(num_samples - starts, 0, window_samples).astype(np.int32)
        offsets = np.arange(window_samples)
        patches, pooled = [], []
        rows = batch * k
        start = 0
        while start < rows:
            size = min(self.window_batch, 1 << (rows - start - 1).bit_length())  # a power of two, capped
            r = np.arange(start, start + size) % rows  # the last chunk wraps around to fill its power of two
            b, w = r // k, r % k
            out = _embed_windows(self.variables, jnp.asarray(padded[b[:, None], starts[w][:, None] + offsets]),
                                 jnp.asarray(lengths[w]), encoder=self.encoder, mean=self.stats[0],
                                 std=self.stats[1])
            n = min(size, rows - start)
            patches.append(np.asarray(out[0][:n]))
            pooled.append(np.asarray(out[1][:n]))
            start += n
        patches_np, pooled_np = np.concatenate(patches), np.concatenate(pooled)
        return patches_np.reshape(batch, k, *patches_np.shape[1:]), pooled_np.reshape(batch, k, -1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """The scene embeddings [n_sounds, D] (`get_scene_embeddings`)."""
        return get_scene_embeddings(audio, self)


def _workdir_stats(path: str) -> Stats | None:
    if not is_training_workdir(path):
        return None
    return read_workdir_config(path).get("data", {}).get("stats")


def load_model(model_file_path: str = "", *, stats: Stats | None = None, target_length: int | None = None,
               window_batch: int = 16) -> HearModel:
    """The HEAR model of any encoder `load_encoder` reads: a converted AudioMAE directory, an AudioMAE or timm weights
    file (.pth, .pt, .bin, .safetensors), `hf-hub:ORG/NAME[@REVISION]`, or a training workdir.

    stats: normalisation (a `DATASET_STATS` name or (mean, std)); default: the workdir's `data.stats`, else
    'audioset'. target_length: the window T (default: the encoder's own). window_batch: windows per encoder call.
    """
    if not model_file_path:
        raise ValueError(f"uamix_jax.hear.load_model needs a model file path: {ACCEPTED}")
    path = os.fspath(model_file_path)
    encoder, variables = load_encoder(path, target_length=target_length)
    chosen = stats if stats is not None else (_workdir_stats(path) or "audioset")
    return HearModel(encoder, variables, resolve_stats(chosen), window_batch=window_batch, source=path)


def _as_numpy(audio: Any, model: HearModel) -> np.ndarray:
    if not isinstance(model, HearModel):
        raise TypeError(f"model must be the HearModel that uamix_jax.hear.load_model returns, got "
                        f"{type(model).__name__}")
    array = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"audio must be float [n_sounds, n_samples] at {SAMPLE_RATE} Hz, got {array.dtype} "
                         f"{list(array.shape)}")
    return array.astype(np.float32, copy=False)


def _device(audio: Any) -> torch.device:
    return audio.device if isinstance(audio, torch.Tensor) else torch.device("cpu")


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """float32 [n_sounds, D]: the pooled embedding of each sound, the mean over its windows beyond T frames."""
    array = _as_numpy(audio, model)
    _, pooled = model.embed_windows(array)
    return torch.from_numpy(pooled.mean(axis=1, dtype=np.float32)).to(_device(audio))


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 [n_sounds, M, D], float32 timestamps [n_sounds, M] in ms): one embedding per 160 ms time patch,
    the patch tokens averaged over frequency, from the window in which the patch is most central."""
    array = _as_numpy(audio, model)
    patches, _ = model.embed_windows(array)
    e = model.encoder
    stamps = patch_timestamps_ms(array.shape[1], e.patch_size)
    window, local = most_central_window(len(stamps), e.target_length // e.patch_size, patches.shape[1])
    embeddings = patches[:, window, local]  # [B, M, D]
    times = np.broadcast_to(stamps.astype(np.float32), (array.shape[0], len(stamps)))
    device = _device(audio)
    return torch.from_numpy(np.ascontiguousarray(embeddings)).to(device), torch.from_numpy(times.copy()).to(device)
