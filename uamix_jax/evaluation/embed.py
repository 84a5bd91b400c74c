"""Clip embeddings of a frozen encoder for a whole manifest: batched, jitted, with a progress bar and a disk cache.

Input policy (docs/method.md, "Few-shot evaluation"), `InputPolicy`:
  crop='centre'  : the clip's centre (pipeline centre crop) of at most (T − 1)·160 + 400 samples, i.e. T frames,
                   zero-padded when shorter; fbank → (x − mean) / (2 std) → encoder → embedding [D].
  crop='windows' : the clip's centre of at most clip_seconds, cut into W = ⌈frames / T⌉ consecutive windows of T
                   frames (the last one zero-padded); the embedding is the mean of the window embeddings over the
                   windows that hold at least T/2 real frames (the first window always counts).
The waveform's mean is removed over the samples read (AudioMAE removes the whole file's mean; the difference is a
DC offset of the cut-off part). Statistics: `stats` (AudioSet's for an AudioSet-pretrained encoder).

Cache (`cache_or_compute`, also the cache of HEAR modules' embeddings, `uamix_jax.evaluation.sources`):
`<cache_dir>/<key>.npz`, key = SHA-256 over (a hash of every parameter's bytes, the encoder's fields, the input
policy, the manifest's name, paths and labels). Same key: loaded, the encoder is not run; anything changed:
recomputed. Batch size and worker count are not in the key: they do not change the numbers.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util
from tqdm import tqdm

from uamix_jax.audio.fbank import FRAME_LENGTH, SAMPLE_RATE, frames_to_samples, num_frames
from uamix_jax.audio.features import Stats, normalize_fbank, pad_or_crop_frames, resolve_stats, waveform_to_fbank
from uamix_jax.data.bad_audio import BadAudioLog
from uamix_jax.data.manifest import Manifest
from uamix_jax.models.vit import AudioMAEEncoder
from uamix_jax.sharding import batch_sharding, data_mesh, replicated

CROPS = ("centre", "windows")
CACHE_VERSION = 1  # bump when the embedding computation changes, so old cache files are not reused


@dataclasses.dataclass(frozen=True)
class InputPolicy:
    """How a clip becomes encoder input (see the module docstring)."""

    target_length: int = 1024
    stats: Stats = "audioset"
    crop: str = "centre"
    clip_seconds: float = 30.0

    def __post_init__(self):
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS} (config.data.crop), got {self.crop!r}")
        if self.target_length < 1:
            raise ValueError(f"target_length must be positive (config.model.target_length), got {self.target_length}")
        resolve_stats(self.stats)  # raises for an unknown name or a std <= 0
        if self.clip_samples < FRAME_LENGTH:
            raise ValueError(f"clip_seconds={self.clip_seconds} reads fewer than {FRAME_LENGTH} samples (one 25 ms "
                             f"frame); raise config.data.clip_seconds")

    @property
    def window_samples(self) -> int:
        """Samples that make exactly `target_length` fbank frames (25 ms frames, 10 ms hop)."""
        return frames_to_samples(self.target_length)

    @property
    def clip_samples(self) -> int:
        """Samples read per clip (the pipeline's centre crop)."""
        most = int(round(self.clip_seconds * SAMPLE_RATE))
        return min(most, self.window_samples) if self.crop == "centre" else most

    @property
    def num_windows(self) -> int:
        frames = num_frames(self.clip_samples)
        return 1 if self.crop == "centre" else math.ceil(frames / self.target_length)

    def mean_std(self) -> tuple[float, float]:
        return resolve_stats(self.stats)

    def to_dict(self) -> dict[str, Any]:
        return {"target_length": self.target_length, "stats": list(self.mean_std()), "crop": self.crop,
                "clip_samples": self.clip_samples}


def _check_encoder(encoder: AudioMAEEncoder, policy: InputPolicy) -> None:
    if encoder.target_length != policy.target_length:
        raise ValueError(f"the encoder was built for T = {encoder.target_length} frames but the input policy has "
                         f"target_length = {policy.target_length}; build it with the policy's target_length "
                         f"(load_encoder(path, target_length=...))")


def clip_embeddings(encoder: AudioMAEEncoder, variables: Any, waveform: jax.Array, length: jax.Array,
                    policy: InputPolicy) -> jax.Array:
    """Embeddings [B, D] of zero-padded 16 kHz clips waveform [B, N] with valid lengths [B] (jittable).

    N = policy.clip_samples. See the module docstring for the two crops.
    """
    chex.assert_rank([waveform, length], [2, 1])
    _check_encoder(encoder, policy)
    t = policy.target_length
    mean, std = policy.mean_std()
    fbank, n_valid = waveform_to_fbank(waveform, length)  # [B, F, 128], frames past the clip are exactly 0
    windows = policy.num_windows
    x = normalize_fbank(pad_or_crop_frames(fbank, windows * t), mean, std)
    b = x.shape[0]
    _, emb = encoder.apply(variables, x.reshape(b * windows, t, x.shape[-1]))
    if windows == 1:
        return emb
    emb = emb.reshape(b, windows, -1)
    real_frames = n_valid[:, None] - t * jnp.arange(windows)[None, :]
    # A window of mostly padding would pull the mean towards the embedding of silence.
    counts = (real_frames >= (t + 1) // 2) | (jnp.arange(windows) == 0)[None, :]
    weights = counts.astype(emb.dtype)
    return jnp.sum(emb * weights[..., None], axis=1) / jnp.sum(weights, axis=1, keepdims=True)


@functools.lru_cache(maxsize=64)
def make_embed_fn(encoder: AudioMAEEncoder, policy: InputPolicy) -> Callable[..., jax.Array]:
    """jit(clip_embeddings) for fixed (encoder, policy): fn(variables, waveform [B, N], length [B]) -> [B, D].

    Cached by (encoder, policy), both frozen dataclasses: every caller that embeds with an equal encoder and input
    policy (another checkpoint of the same shape, another evaluation set) gets the same jitted function, so the
    forward pass compiles once per batch shape for the whole process.
    """
    _check_encoder(encoder, policy)
    return jax.jit(lambda variables, waveform, length: clip_embeddings(encoder, variables, waveform, length, policy))


def embed_manifest(manifest: Manifest, encoder: AudioMAEEncoder, variables: Any, *, policy: InputPolicy,
                   batch_size: int = 32, worker_count: int = 0, progress: bool = True,
                   bad_audio_log: str | os.PathLike | BadAudioLog | None = None,
                   embed_fn: Callable[..., jax.Array] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Embeds every clip of `manifest` once: (embeddings float32 [M, D], valid bool [M]).

    Clips that fail to load are logged (`bad_audio_log`), get valid = False and a zero row. Batches are split over
    the local devices (the batch size is rounded up to a multiple of their count) and the next batch is decoded
    while the current one runs. worker_count > 0 decodes in that many grain processes. `embed_fn`: a
    `make_embed_fn(encoder, policy)` (None: that one, cached).
    """
    from uamix_jax.data.pipeline import make_pipeline  # grain import only when embedding

    _check_encoder(encoder, policy)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive (config.eval.batch_size), got {batch_size}")
    mesh = data_mesh(jax.local_devices())
    n_dev = mesh.devices.size
    batch = -(-batch_size // n_dev) * n_dev
    data = batch_sharding(mesh)
    variables = jax.device_put(variables, replicated(mesh))
    fn = make_embed_fn(encoder, policy) if embed_fn is None else embed_fn

    m = len(manifest)
    out = np.zeros((m, encoder.width), np.float32)
    valid = np.zeros((m,), bool)
    log = bad_audio_log if isinstance(bad_audio_log, BadAudioLog) else BadAudioLog(bad_audio_log)
    it = make_pipeline(manifest, batch_size=batch, clip_samples=policy.clip_samples, seed=0, train=False,
                       num_epochs=1, drop_remainder=False, worker_count=worker_count, bad_audio_log=log,
                       sample_rate=SAMPLE_RATE)

    def collect(pending: tuple[jax.Array, np.ndarray, np.ndarray]) -> int:
        emb, index, mask = pending
        rows = index[mask]
        out[rows] = np.asarray(emb)[mask]
        valid[rows] = True
        return int(mask.sum())

    pending = None
    try:
        with tqdm(total=m, desc=f"embedding {manifest.name}", unit="clip", disable=not progress) as bar:
            for item in it:
                wave = jax.device_put(item["waveform"], data)
                length = jax.device_put(item["length"], data)
                current = (fn(variables, wave, length), item["index"], item["mask"])  # dispatched, not awaited
                if pending is not None:
                    bar.update(collect(pending))
                pending = current
            if pending is not None:
                bar.update(collect(pending))
    finally:
        if hasattr(it, "close"):
            it.close()
    if not valid.all():
        logging.warning("%d of %d clips of %s could not be embedded (bad audio) and are left out", int(m - valid.sum()),
                        m, manifest.name)
    return out, valid


# ----------------------------------------------------------------------------------------------------------- cache
def params_fingerprint(variables: Any) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes (so any changed weight changes it)."""
    h = hashlib.sha256()
    flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, dict(variables)), sep="/")
    for path in sorted(flat):
        leaf = np.ascontiguousarray(flat[path])
        h.update(f"{path}|{leaf.dtype.str}|{leaf.shape}\n".encode())
        h.update(leaf.tobytes())
    return h.hexdigest()


def encoder_fields(encoder: AudioMAEEncoder) -> dict[str, Any]:
    """The encoder's configuration as plain JSON values (dtype by name)."""
    fields = {}
    for f in dataclasses.fields(encoder):
        if f.name in ("parent", "name"):
            continue
        value = getattr(encoder, f.name)
        fields[f.name] = jnp.dtype(value).name if f.name == "dtype" else value
    return fields


def manifest_fingerprint(manifest: Manifest) -> str:
    """SHA-256 over the manifest's name, TFDS source, paths and labels."""
    h = hashlib.sha256()
    h.update(f"{manifest.name}|{manifest.tfds!r}|{len(manifest)}\n".encode())
    h.update(manifest.paths.prefix.encode() + b"\n")
    h.update(b"\n".join(manifest.paths.values.tolist()))
    h.update(np.ascontiguousarray(manifest.labels, np.int32).tobytes())
    return h.hexdigest()


def embedding_cache_key(manifest: Manifest, encoder: AudioMAEEncoder, variables: Any, policy: InputPolicy,
                        params_hash: str | None = None) -> str:
    """The cache key (hex SHA-256) of (encoder weights, encoder fields, input policy, manifest)."""
    record = {"version": CACHE_VERSION, "params": params_hash or params_fingerprint(variables),
              "encoder": encoder_fields(encoder), "policy": policy.to_dict(),
              "manifest": manifest_fingerprint(manifest)}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def cache_or_compute(manifest: Manifest, key: str, cache_dir: str | os.PathLike,
                     compute: Callable[[], tuple[np.ndarray, np.ndarray]], *, width: int | None = None,
                     meta: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray, str, bool]:
    """The disk cache of every embedding source: (embeddings [M, D], valid [M], cache file, reused?).

    `<cache_dir>/<key[:32]>.npz` is loaded when it holds `key` and M rows (of `width` columns when given); otherwise
    compute() → (embeddings float32 [M, D], valid bool [M]) is written there (atomically) with the manifest's labels
    and paths, the key and `meta` (JSON strings describing the source). A truncated or foreign file is recomputed.
    """
    cache_dir = os.fspath(cache_dir)
    path = os.path.join(cache_dir, f"{key[:32]}.npz")
    if os.path.isfile(path):
        try:
            with np.load(path) as f:
                emb = f["embeddings"]
                if str(f["key"]) == key and emb.shape[0] == len(manifest) and width in (None, emb.shape[1]):
                    logging.info("embeddings of %s: reusing %s", manifest.name, path)
                    return emb, f["valid"], path, True
        except (OSError, KeyError, ValueError) as err:  # a truncated or foreign file is rebuilt, not trusted
            logging.warning("embedding cache %s is unreadable (%s); recomputing", path, err)
    emb, valid = compute()
    chex.assert_shape(valid, (len(manifest),))
    chex.assert_rank(emb, 2)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, embeddings=emb, valid=valid, labels=manifest.labels, paths=np.array(manifest.paths.tolist()),
             key=np.array(key), **{k: np.array(v) for k, v in (meta or {}).items()})
    os.replace(tmp, path)  # a crash mid-write never leaves a file that looks complete
    logging.info("embeddings of %s: wrote %s", manifest.name, path)
    return emb, valid, path, False


def cached_embeddings(manifest: Manifest, encoder: AudioMAEEncoder, variables: Any, *, policy: InputPolicy,
                      cache_dir: str | os.PathLike, batch_size: int = 32, worker_count: int = 0,
                      progress: bool = True, params_hash: str | None = None,
                      bad_audio_log: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, str, bool]:
    """`embed_manifest` behind the disk cache (`cache_or_compute`): (embeddings [M, D], valid [M], cache file,
    reused?).

    `params_hash` skips re-hashing the weights when the caller already has `params_fingerprint(variables)`.
    Clips that fail to load are listed in `bad_audio_log` (None: `<cache_dir>/bad_audio.txt`).
    """
    key = embedding_cache_key(manifest, encoder, variables, policy, params_hash)
    log = bad_audio_log or os.path.join(os.fspath(cache_dir), "bad_audio.txt")
    return cache_or_compute(
        manifest, key, cache_dir,
        lambda: embed_manifest(manifest, encoder, variables, policy=policy, batch_size=batch_size,
                               worker_count=worker_count, progress=progress, bad_audio_log=log),
        width=encoder.width,
        meta={"encoder": json.dumps(encoder_fields(encoder)), "policy": json.dumps(policy.to_dict())})
