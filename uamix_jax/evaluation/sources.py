"""Encoder specs: our encoders, any HEAR 2021 module, or precomputed embeddings, as `Embedder`s of the harness.

    spec = parse_spec("PaSST=hear:hear21passt.base")        # EncoderSpec(label, source, path, model_file)
    embedder = make_embedder(spec, config, cache_dir="OUT/embeddings")
    emb, valid = embedder.embed(manifest)                    # float32 [M, D], bool [M]

The few-shot command (init_from, compare) and the linear probe (init_from) take every encoder here, so each kind is
scored on the same episodes and splits. A spec is `[NAME=]SOURCE`; NAME labels its line, row and records:

  PATH                      anything `encoders.encoder_from` reads (a converted AudioMAE directory, an AudioMAE or
                            timm weights file, hf-hub:ORG/NAME[@REVISION], a training workdir), or '' for a random
                            init of config.model.size; embedded under the few-shot input policy (`embed.InputPolicy`:
                            model.target_length, data.stats, data.crop, data.clip_seconds)
  hear:MODULE[@MODEL_FILE]  an installed HEAR 2021 module: MODULE.load_model(MODEL_FILE or ""), then
                            get_scene_embeddings on each clip's centre of at most data.clip_seconds, decoded by the
                            project's loaders (mono) and resampled to the model's `sample_rate`, not padded. Clips of
                            equal length go together in batches of eval.batch_size, so a set of equal-length clips
                            gives the module one input shape (at most 4 batches' worth of clips wait for their
                            length's batch to fill; then the largest group goes as it is). The module's own
                            framework runs it (a torch.nn.Module in eval mode, on the device of its parameters,
                            without gradients; or a tf.Module); data.stats and data.crop do not apply
  npz:FILE                  precomputed embeddings: an .npz with `clip_ids` [M] (strings, as `Manifest.clip_ids`
                            gives them: for a folder layout the path relative to data.root, e.g. dog/001.wav) and
                            `embeddings` [M, D] (float), optionally `valid` [M] (bool; False marks a clip its encoder
                            could not read: it is left out as unreadable audio is). Rows are picked by id in the
                            manifest's order; ids the manifest lacks are ignored; every clip of the manifest must
                            have one

An item without NAME is labelled by its path's base name ('': "random init (SIZE)"), by its module (with
"@" + MODEL_FILE's base name), or by its file's stem. An item that starts with hear: or npz:, or that exists as a
path as a whole, has no NAME even when it holds '=' (runs/lr=3e-4).

Caches (in cache_dir, `embed.cache_or_compute`): our encoders' as `embed.cached_embeddings` keys them; a HEAR
module's by the module (its name, `__version__`, and its file's path, size and mtime), the model file (its text and,
when it is a path, the path, size and mtime of the file or of every file under a directory: the bytes are not
hashed, so that a large checkpoint costs nothing to check), the model's sample rate, the samples read per clip and
the manifest's clips (`embed.manifest_fingerprint`). An npz: file is read as it is (its SHA-256 goes into the
records).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import itertools
import json
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import ml_collections
import numpy as np
from tqdm import tqdm

from uamix_jax.data.bad_audio import BadAudioLog
from uamix_jax.data.manifest import Manifest
from uamix_jax.evaluation.embed import CACHE_VERSION, InputPolicy, cache_or_compute, manifest_fingerprint
from uamix_jax.evaluation.encoders import encoder_from
from uamix_jax.evaluation.fewshot_driver import Embedder, encoder_embedder
from uamix_jax.models.precision import compute_dtype

__all__ = ["EncoderSpec", "parse_spec", "parse_specs", "make_embedder", "npz_embedder", "read_npz_embeddings",
           "hear_embedder", "hear_embeddings", "hear_cache_key", "ENCODER_SYNTAX"]

ENCODER_SYNTAX = ("[NAME=]PATH (a converted AudioMAE directory, an AudioMAE/timm weights file, hf-hub:ORG/NAME, "
                  "a training workdir; '' = random init), [NAME=]hear:MODULE[@MODEL_FILE] or [NAME=]npz:FILE")
_PREFIXES = {"hear:": "hear", "npz:": "npz"}
HEAR_FUNCTIONS = ("load_model", "get_scene_embeddings")


# ------------------------------------------------------------------------------------------------------ specs
@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """One `[NAME=]SOURCE` item (module docstring): its label, source ('encoder', 'hear' or 'npz'), path (an encoder
    path or hub name, '' = random init; a module name; an .npz file) and, for hear, the model file."""

    label: str
    source: str
    path: str
    model_file: str = ""

    def identity(self) -> tuple[str, str, str]:
        """What makes two specs the same encoder (paths made absolute): the same one twice would repeat its line."""
        def absolute(p: str) -> str:
            return os.path.abspath(p) if p and (self.source != "hear" or os.path.exists(p)) else p

        return self.source, (self.path if self.source == "hear" else absolute(self.path)), absolute(self.model_file)


def parse_spec(item: str, *, random_label: str = "random init") -> EncoderSpec:
    """The EncoderSpec of one `[NAME=]SOURCE` item; random_label names an unnamed random init ('')."""
    item = item.strip()
    label, body = "", item
    if not item.startswith(tuple(_PREFIXES)) and not os.path.exists(item):
        name, sep, rest = item.partition("=")
        if sep:
            label, body = name.strip(), rest.strip()
    source, path = "encoder", body
    for prefix, kind in _PREFIXES.items():
        if body.startswith(prefix):
            source, path = kind, body[len(prefix):].strip()
    model_file = ""
    if source == "hear":
        path, _, model_file = (s.strip() for s in path.partition("@"))
        if not path or not all(part.isidentifier() for part in path.split(".")):
            raise ValueError(f"encoder {item!r}: hear: takes a Python module name, hear:MODULE[@MODEL_FILE] (e.g. "
                             f"hear:hear21passt.base, hear:uamix_jax.hear@runs/stage2), got {path!r}")
        default = path + (f"@{os.path.basename(os.path.normpath(model_file))}" if model_file else "")
    elif source == "npz":
        if not path:
            raise ValueError(f"encoder {item!r}: npz: takes a file, npz:FILE (an .npz with clip_ids and embeddings)")
        default = os.path.splitext(os.path.basename(path))[0]
    else:
        default = os.path.basename(os.path.normpath(path)) if path else random_label
    return EncoderSpec(label or default, source, path, model_file)


def parse_specs(items: Sequence[str], *, random_label: str = "random init") -> list[EncoderSpec]:
    """EncoderSpecs of several items in order; the same encoder twice keeps its first line; labels must differ."""
    out: list[EncoderSpec] = []
    for item in items:
        spec = parse_spec(item, random_label=random_label)
        if spec.path and spec.identity() in {s.identity() for s in out}:
            continue
        out.append(spec)
    labels = [s.label for s in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"encoder labels must differ, got {labels}; name them as NAME=SOURCE ({ENCODER_SYNTAX})")
    return out


def make_embedder(spec: EncoderSpec, config: ml_collections.ConfigDict, *, cache_dir: str,
                  bad_audio_log: str | None = None, report: Callable[[str], None] | None = None) -> Embedder:
    """The Embedder of `spec` with the fields a few-shot or probe config has: model (an encoder's T, posemb, size
    of a random init), dtype, seed, data (stats, crop, clip_seconds, worker_count), eval.batch_size, progress.
    Embeddings are cached in cache_dir; report(message) hears what was loaded and where embeddings came from."""
    d = config.data
    if spec.source == "npz":
        return npz_embedder(spec.label, spec.path, report=report)
    if spec.source == "hear":
        return hear_embedder(spec.label, spec.path, spec.model_file, clip_seconds=float(d.clip_seconds),
                             cache_dir=cache_dir, batch_size=int(config.eval.batch_size),
                             worker_count=int(d.worker_count), progress=bool(config.progress),
                             bad_audio_log=bad_audio_log, report=report)
    loaded = encoder_from(spec.path, config.model, dtype=compute_dtype(config.dtype), seed=config.seed)
    encoder = loaded.encoder
    policy = InputPolicy(target_length=encoder.target_length, stats=d.stats, crop=d.crop, clip_seconds=d.clip_seconds)
    if report is not None:
        report(f"[{spec.label}] {loaded.description}: ViT {encoder.width}x{encoder.depth}, T = "
               f"{encoder.target_length}")
    return encoder_embedder(spec.label, loaded, policy, cache_dir=cache_dir, batch_size=config.eval.batch_size,
                            worker_count=d.worker_count, progress=config.progress, bad_audio_log=bad_audio_log,
                            report=report)


# -------------------------------------------------------------------------------------------------------- npz
def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_npz_embeddings(path: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(clip ids [N], embeddings float32 [N, D], valid bool [N]) of an npz: source file; errors name the file and
    the key (module docstring for the layout)."""
    where = f"npz:{path}"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: no such file; npz:FILE takes an .npz with clip_ids [M] and embeddings "
                                f"[M, D]")
    try:
        f = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - whatever the reader says, the file is not a readable .npz
        raise ValueError(f"{where}: not a readable .npz file ({type(err).__name__}: {err})") from err
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{where}: holds a single array (an .npy file), not an .npz with clip_ids and embeddings")
    arrays = {}
    with f:
        present = list(f.files)
        for key in ("clip_ids", "embeddings"):
            if key not in present:
                raise ValueError(f"{where}: has no {key!r} array (it holds {present}); an npz: source holds "
                                 f"clip_ids [M] (the dataset's clip ids) and embeddings [M, D]")
        for key in ("clip_ids", "embeddings", "valid"):
            if key not in present:
                continue
            try:
                arrays[key] = f[key]
            except ValueError as err:  # an object array: np.save pickled it
                raise ValueError(f"{where}: {key!r} holds Python objects (pickled), which are not read; save "
                                 f"clip_ids as strings (np.array(ids, dtype=str))") from err
            except Exception as err:  # noqa: BLE001 - a truncated or corrupt archive member
                raise ValueError(f"{where}: {key!r} cannot be read ({type(err).__name__}: {err})") from err
    ids, emb = arrays["clip_ids"], arrays["embeddings"]
    if ids.ndim != 1 or ids.dtype.kind not in "US":
        raise ValueError(f"{where}: 'clip_ids' must be a 1-D array of strings, got {ids.dtype} {list(ids.shape)}")
    if emb.ndim != 2 or emb.shape[0] != ids.shape[0] or emb.dtype.kind not in "fiu":
        raise ValueError(f"{where}: 'embeddings' must be numbers [M, D] with M = {ids.shape[0]} rows as "
                         f"'clip_ids', got {emb.dtype} {list(emb.shape)}")
    valid = arrays.get("valid", np.ones(ids.shape, bool))
    if valid.shape != ids.shape or valid.dtype != bool:
        raise ValueError(f"{where}: 'valid' must be bool [{ids.shape[0]}] as 'clip_ids', got {valid.dtype} "
                         f"{list(valid.shape)}")
    names = [s.decode("utf-8") for s in ids.tolist()] if ids.dtype.kind == "S" else ids.tolist()
    emb = emb.astype(np.float32)
    bad = np.flatnonzero(valid & ~np.isfinite(emb).all(axis=1))
    if bad.size:
        raise ValueError(f"{where}: 'embeddings' has NaN or infinite values for {bad.size} clips, the first "
                         f"{names[bad[0]]!r}; mark clips without an embedding False in 'valid'")
    emb[~valid] = 0.0  # rows of clips without an embedding are never read; zeros keep them finite
    return names, emb, valid


def npz_embedder(label: str, path: str, *, report: Callable[[str], None] | None = None) -> Embedder:
    """The Embedder of precomputed embeddings (npz:FILE). The file is read and checked now; embed(manifest)
    picks its rows by clip id (module docstring) and names the first of the manifest's ids the file lacks."""
    path = os.path.abspath(path)
    names, emb, valid = read_npz_embeddings(path)
    row_of: dict[str, int] = {}
    for row, name in enumerate(names):
        if row_of.setdefault(name, row) != row:
            raise ValueError(f"npz:{path}: clip id {name!r} occurs twice in 'clip_ids' (rows {row_of[name]} and "
                             f"{row}); each clip needs one embedding")
    if report is not None:
        report(f"[{label}] npz:{path}: {emb.shape[0]:,} embeddings of dimension {emb.shape[1]}")

    def embed(manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
        ids = manifest.clip_ids.tolist()
        rows = np.array([row_of.get(c, -1) for c in ids], np.int64)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            raise ValueError(
                f"npz:{path} has no embedding for clip {ids[missing[0]]!r} of {manifest.name} ({missing.size} of "
                f"{len(ids)} clips missing); clip_ids must be as Manifest.clip_ids gives them (a folder layout: "
                f"the path relative to data.root); the file's first id is {names[0] if names else None!r}")
        return emb[rows], valid[rows]

    return Embedder(label, f"npz:{path}", embed, {"embeddings": path, "embeddings_sha256": _file_sha256(path)})


# ------------------------------------------------------------------------------------------------------- HEAR
def _import_hear_module(name: str) -> ModuleType:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and (name == err.name or name.startswith(err.name + ".")):
            raise ModuleNotFoundError(
                f"hear:{name}: no module named {err.name!r} is installed; install the package of the HEAR module "
                f"(pip install ...) or put the folder that holds {name!r} on PYTHONPATH", name=name) from err
        raise ModuleNotFoundError(f"hear:{name}: importing it failed, it needs {err.name!r}, which is not "
                                  f"installed ({err})", name=err.name) from err
    missing = [fn for fn in HEAR_FUNCTIONS if not callable(getattr(module, fn, None))]
    if missing:
        raise ValueError(f"hear:{name} ({getattr(module, '__file__', None)}) has no {' or '.join(missing)}; a HEAR "
                         f"2021 module defines load_model(model_file_path), get_scene_embeddings(audio, model) and "
                         f"get_timestamp_embeddings(audio, model)")
    return module


def _stamp(path: str) -> list[Any]:
    """[[path, size, mtime_ns], ...] of a file, or of every file under a directory (sorted); [] for no path."""
    if not path or not os.path.exists(path):
        return []
    path = os.path.abspath(path)
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, names in os.walk(path) for f in names)
    out = []
    for f in files:
        st = os.stat(f)
        out.append([f, st.st_size, st.st_mtime_ns])
    return out


def hear_cache_key(module: ModuleType, model_file: str, sample_rate: int, clip_samples: int,
                   manifest: Manifest) -> str:
    """The cache key (hex SHA-256) of a HEAR module's scene embeddings of `manifest` (module docstring)."""
    record = {"version": CACHE_VERSION, "source": "hear", "module": module.__name__,
              "module_version": str(getattr(module, "__version__", "")),
              "module_file": _stamp(getattr(module, "__file__", None) or ""), "model_file": model_file,
              "model_stamp": _stamp(model_file), "sample_rate": sample_rate, "clip_samples": clip_samples,
              "manifest": manifest_fingerprint(manifest)}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch
        x = x.detach().cpu()
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x)


def _scene_embeddings(module: ModuleType, model: Any, audio: np.ndarray) -> np.ndarray:
    """module.get_scene_embeddings of float32 audio [B, N] in the model's framework → float32 [B, D]."""
    torch = sys.modules.get("torch")
    tf = sys.modules.get("tensorflow")
    if torch is not None and isinstance(model, torch.nn.Module):
        first = next(itertools.chain(model.parameters(), model.buffers()), None)
        device = first.device if first is not None else torch.device("cpu")
        with torch.no_grad():
            out = module.get_scene_embeddings(torch.from_numpy(audio).to(device), model)
    elif tf is not None and isinstance(model, tf.Module):
        out = module.get_scene_embeddings(tf.convert_to_tensor(audio), model)
    else:
        raise TypeError(f"hear:{module.__name__}: load_model returned a {type(model).__name__}; the HEAR API asks "
                        f"for a torch.nn.Module or a tf.Module")
    emb = _to_numpy(out)
    if emb.ndim != 2 or emb.shape[0] != audio.shape[0]:
        raise ValueError(f"hear:{module.__name__}: get_scene_embeddings of audio {list(audio.shape)} returned shape "
                         f"{list(emb.shape)}; the HEAR API returns [n_sounds, D]")
    if not np.isfinite(emb).all():
        raise ValueError(f"hear:{module.__name__}: get_scene_embeddings returned NaN or infinite values for audio "
                         f"{list(audio.shape)}")
    return emb.astype(np.float32)


class _LengthBatches:
    """Clips grouped by length: add() returns the batches it filled, flush() the rest. At most `limit` clips wait;
    beyond that the largest group goes out as a partial batch (datasets of many distinct lengths)."""

    def __init__(self, batch_size: int, limit: int):
        self.batch_size, self.limit = batch_size, limit
        self.groups: dict[int, list[tuple[int, np.ndarray]]] = {}
        self.waiting = 0

    def _pop(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        group = self.groups.pop(length)
        self.waiting -= len(group)
        return np.array([i for i, _ in group], np.int64), np.stack([w for _, w in group])

    def add(self, index: int, wave: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        group = self.groups.setdefault(wave.shape[0], [])
        group.append((index, wave))
        self.waiting += 1
        if len(group) == self.batch_size:
            return [self._pop(wave.shape[0])]
        if self.waiting > self.limit:
            return [self._pop(max(self.groups, key=lambda n: len(self.groups[n])))]
        return []

    def flush(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self._pop(n) for n in sorted(self.groups)]


def hear_embeddings(manifest: Manifest, module: ModuleType, model: Any, *, clip_samples: int, batch_size: int = 32,
                    worker_count: int = 0, progress: bool = False,
                    bad_audio_log: str | os.PathLike | BadAudioLog | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A HEAR module's scene embeddings of every clip: (float32 [M, D], valid bool [M]).

    Each clip's centre of at most clip_samples at the model's sample_rate (`data.pipeline.make_pipeline`, eval
    order; worker_count decoding processes), unpadded; equal lengths batched together (module docstring). Clips
    that fail to load are logged in bad_audio_log and get valid = False and a zero row.
    """
    from uamix_jax.data.pipeline import make_pipeline  # grain import only when embedding

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive (config.eval.batch_size), got {batch_size}")
    log = bad_audio_log if isinstance(bad_audio_log, BadAudioLog) else BadAudioLog(bad_audio_log)
    it = make_pipeline(manifest, batch_size=batch_size, clip_samples=clip_samples, seed=0, train=False,
                       num_epochs=1, drop_remainder=False, worker_count=worker_count, bad_audio_log=log,
                       sample_rate=int(model.sample_rate))
    batches = _LengthBatches(batch_size, limit=4 * batch_size)
    rows: dict[int, np.ndarray] = {}
    try:
        with tqdm(total=len(manifest), desc=f"embedding {manifest.name} (hear:{module.__name__})", unit="clip",
                  disable=not progress) as bar:
            for item in it:
                filled = []
                for r in np.flatnonzero(item["mask"]):
                    wave = np.array(item["waveform"][r, :item["length"][r]], np.float32)  # a copy: batches wait
                    filled += batches.add(int(item["index"][r]), wave)
                for index, audio in filled:
                    rows.update(zip(index.tolist(), _scene_embeddings(module, model, audio)))
                    bar.update(index.size)
            for index, audio in batches.flush():
                rows.update(zip(index.tolist(), _scene_embeddings(module, model, audio)))
                bar.update(index.size)
    finally:
        it.close()
    if not rows:
        raise ValueError(f"hear:{module.__name__}: no clip of {manifest.name} could be read (see the bad audio log "
                         f"{log.path})")
    width = next(iter(rows.values())).shape[0]
    emb = np.zeros((len(manifest), width), np.float32)
    valid = np.zeros((len(manifest),), bool)
    index = np.fromiter(rows, np.int64, len(rows))
    emb[index] = np.stack([rows[i] for i in index.tolist()])
    valid[index] = True
    return emb, valid


def hear_embedder(label: str, module_name: str, model_file: str = "", *, clip_seconds: float, cache_dir: str | None,
                  batch_size: int = 32, worker_count: int = 0, progress: bool = False,
                  bad_audio_log: str | None = None, report: Callable[[str], None] | None = None) -> Embedder:
    """The Embedder of an installed HEAR 2021 module: imported and its model loaded now (errors name the module),
    clips embedded by `hear_embeddings` behind the disk cache in cache_dir (None: no cache)."""
    module = _import_hear_module(module_name)
    where = f"hear:{module_name}" + (f"@{model_file}" if model_file else "")
    try:
        model = module.load_model(model_file)
    except Exception as err:  # noqa: BLE001 - the module's own error, with which module and file it came from
        raise RuntimeError(f"{where}: {module_name}.load_model({model_file!r}) failed: {type(err).__name__}: "
                           f"{err}") from err
    try:
        sample_rate = int(model.sample_rate)
    except (AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: the model load_model returned has no integer sample_rate (the HEAR API's "
                         f"input rate in Hz)") from err
    if sample_rate < 1:
        raise ValueError(f"{where}: the model's sample_rate must be positive, got {sample_rate}")
    if hasattr(model, "eval"):
        model.eval()  # torch: dropout off, batch norm on its running statistics
    clip_samples = int(round(clip_seconds * sample_rate))
    if clip_samples < 1:
        raise ValueError(f"{where}: clip_seconds = {clip_seconds} reads no samples at {sample_rate} Hz; raise "
                         f"config.data.clip_seconds")
    described = f"hear:{module_name}" + (f"@{os.path.abspath(model_file)}" if model_file and
                                         os.path.exists(model_file) else f"@{model_file}" if model_file else "")
    info: dict[str, Any] = {"sample_rate": sample_rate, "clip_samples": clip_samples}
    if report is not None:
        size = getattr(model, "scene_embedding_size", "?")
        report(f"[{label}] {described}: {sample_rate} Hz, scene embeddings of dimension {size}")

    def compute(manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
        return hear_embeddings(manifest, module, model, clip_samples=clip_samples, batch_size=batch_size,
                               worker_count=worker_count, progress=progress,
                               bad_audio_log=bad_audio_log or (os.path.join(cache_dir, "bad_audio.txt")
                                                               if cache_dir else None))

    def embed(manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
        if cache_dir is None:
            return compute(manifest)
        key = hear_cache_key(module, model_file, sample_rate, clip_samples, manifest)
        emb, valid, path, reused = cache_or_compute(
            manifest, key, cache_dir, lambda: compute(manifest),
            meta={"encoder": json.dumps({"hear": described, "sample_rate": sample_rate}),
                  "policy": json.dumps({"clip_samples": clip_samples})})
        info["embeddings"] = path
        if report is not None:
            report(f"[{label}] embeddings {'reused from' if reused else 'written to'} {path}")
        return emb, valid

    return Embedder(label, described, embed, info)
