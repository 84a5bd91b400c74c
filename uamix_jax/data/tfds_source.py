"""TFDS datasets prepared in ArrayRecord format, read with `tfds.data_source` and fed to the same grain pipeline.

The only module that imports tensorflow_datasets (lazily, inside functions): TFDS's `Audio` feature needs
TensorFlow to decode even on this path (seen with tensorflow-datasets 4.9.10), so it sits behind the `tfds` extra
(`pip install 'uamix-jax[tfds]'`, which brings tensorflow-cpu). Nothing is downloaded: the dataset must already be
prepared under `data_dir` (`tfds build <name> --file_format=array_record`, or a builder's
`download_and_prepare(file_format='array_record')`).

Records carry decoded sample arrays. TFDS stores WAV audio as integers (int16, or int64 holding 16-bit values), so
integer arrays are scaled by 1/32768 to [-1, 1] like a decoded 16-bit file; float arrays are taken as they are.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import soxr

from uamix_jax.audio.io import AudioLoadError
from uamix_jax.data.manifest import Manifest, MultiLabels, StringColumn, TfdsRef

_PCM16_SCALE = 1.0 / 32768.0


def _import_tfds() -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise ImportError("data.name='tfds' needs tensorflow-datasets and tensorflow-cpu: "
                          "pip install 'uamix-jax[tfds]'") from e
    return tfds


def open_data_source(ref: TfdsRef) -> Any:
    """`tfds.data_source` over an already prepared ArrayRecord dataset (never downloads)."""
    tfds = _import_tfds()
    try:
        return tfds.data_source(ref.name, split=ref.split, data_dir=ref.data_dir, download=False)
    except Exception as e:  # noqa: BLE001 - TFDS raises many types; the fix is the same
        raise FileNotFoundError(
            f"TFDS dataset {ref.name!r} split {ref.split!r} is not prepared in ArrayRecord format under "
            f"{ref.data_dir or '~/tensorflow_datasets'} ({type(e).__name__}: {e}). Prepare it first with "
            f"`tfds build {ref.name} --file_format=array_record --data_dir=...`.") from e


def _feature(record: dict[str, Any], key: str) -> Any:
    value: Any = record
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"TFDS record has no feature {key!r} (top-level keys: {sorted(record)})")
        value = value[part]
    return value


def _feature_info(features: Any, key: str) -> Any:
    for part in key.split("/"):
        features = features[part]
    return features


def waveform_from_array(samples: np.ndarray, sample_rate: int, target_rate: int, name: str) -> np.ndarray:
    """Decoded TFDS samples [N] or [N, C] -> float32 mono at target_rate, with the checks `load_audio` applies."""
    samples = np.asarray(samples)
    if samples.size == 0:
        raise AudioLoadError(name, "no audio samples (zero length)")
    if np.issubdtype(samples.dtype, np.integer):
        samples = samples.astype(np.float32) * _PCM16_SCALE
    samples = samples.astype(np.float32, copy=False)
    if not np.all(np.isfinite(samples)):
        raise AudioLoadError(name, "contains NaN or infinite samples")
    wave = samples.mean(axis=1, dtype=np.float32) if samples.ndim == 2 else samples.reshape(-1)
    if sample_rate != target_rate:
        wave = soxr.resample(wave, sample_rate, target_rate, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(wave)


def read_tfds(root: str | None, *, tfds_name: str, split: str = "train", audio_key: str = "audio",
              label_key: str | None = "label", sample_rate: int | None = None) -> Manifest:
    """A Manifest over TFDS dataset `tfds_name`, `split`, prepared under data_dir `root` (None: TFDS's default).

    Labels come from the ClassLabel feature `label_key` ('/'-separated when nested, e.g. 'instrument/label'; None:
    unlabelled, -1); reading them decodes each record once. Paths are display names `tfds:<name>/<split>/<i>`.
    """
    ref = TfdsRef(name=tfds_name, split=split, data_dir=root, audio_key=audio_key, label_key=label_key,
                  sample_rate=sample_rate)
    ds = open_data_source(ref)
    n = len(ds)
    features = ds.dataset_info.features
    _feature_info(features, audio_key)  # fails early, naming the key, if the audio feature is absent
    if label_key is None:
        labels = np.full((n,), -1, np.int32)
        class_names: tuple[str, ...] = ()
    else:
        labels = np.fromiter((int(_feature(ds[i], label_key)) for i in range(n)), dtype=np.int32, count=n)
        names = getattr(_feature_info(features, label_key), "names", None)
        class_names = tuple(names) if names else tuple(str(i) for i in range(int(labels.max(initial=-1)) + 1))
    display = [f"tfds:{tfds_name}/{split}/{i}" for i in range(n)]
    return Manifest(
        name=f"tfds:{tfds_name}", paths=StringColumn.from_strings(display, prefix=f"tfds:{tfds_name}/"),
        labels=labels, multi_labels=MultiLabels.from_labels(labels, len(class_names)),
        splits=StringColumn.constant(split, n), folds=np.full((n,), -1, np.int32),
        clip_ids=StringColumn.from_strings([f"{split}/{i}" for i in range(n)]), class_names=class_names,
        tfds=ref, records=np.arange(n, dtype=np.int64))


class TfdsSource:
    """AudioSource over a TFDS manifest; the data source is opened lazily in each (worker) process."""

    def __init__(self, manifest: Manifest):
        if manifest.tfds is None or manifest.records is None:
            raise ValueError(f"TfdsSource needs a TFDS manifest (from read_dataset('tfds', ...)), "
                             f"got {manifest.name!r}")
        self.ref, self.records = manifest.tfds, manifest.records
        self.labels, self.paths = manifest.labels, manifest.paths
        self._ds: Any = None
        self._rate: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_ds"] = None  # reopened in the worker: file handles do not cross processes
        return state

    def __len__(self) -> int:
        return int(self.records.shape[0])

    def _open(self) -> Any:
        if self._ds is None:
            self._ds = open_data_source(self.ref)
            rate = self.ref.sample_rate or getattr(
                _feature_info(self._ds.dataset_info.features, self.ref.audio_key), "sample_rate", None)
            if not rate:
                raise ValueError(f"TFDS {self.ref.name!r}: the audio feature {self.ref.audio_key!r} declares no "
                                 f"sample_rate; pass sample_rate= to read_dataset('tfds', ...)")
            self._rate = int(rate)
        return self._ds

    def load(self, index: int, sample_rate: int) -> np.ndarray:
        record = self._open()[int(self.records[index])]
        return waveform_from_array(_feature(record, self.ref.audio_key), self._rate, sample_rate, self.name(index))

    def name(self, index: int) -> str:
        return self.paths[index]

    def duration(self, index: int) -> float:
        """Seconds of clip `index` (decodes the record: TFDS has no header-only read)."""
        record = self._open()[int(self.records[index])]
        return float(np.asarray(_feature(record, self.ref.audio_key)).shape[0]) / float(self._rate)
