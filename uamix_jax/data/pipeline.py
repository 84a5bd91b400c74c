"""The grain input pipeline: clips in, fixed-shape per-process batches of 16 kHz waveforms out.

Global order. Epoch e of N clips is one permutation (seeded by `seed` and e when training, the manifest order
otherwise). It is cut into global batches of G = batch_size * process_count consecutive positions; process p takes
positions [p*b, (p+1)*b) of each, so concatenating the processes' batches gives the same global batch whatever the
process count, and every clip is seen exactly once per epoch over all processes. With drop_remainder the last
N mod G positions of the epoch are dropped; without it the last global batch is padded with rows whose `mask` is
False (silence, length 0, index = label = -1; `waveform_to_fbank` gives all-zero frames for them).

Each element of the grain dataset is a whole batch, built by `_BatchBuilder` from its overall batch number alone, so
any batch can be rebuilt from the iterator state and worker processes need no coordination. Random crops are keyed by
(seed, epoch, clip index); a clip that fails to load is replaced by a seeded choice of another clip that is not in
the same global batch (so a sample id never occurs twice in one batch: no false negative for the contrastive loss),
and the batch carries (index, reason) of the failures to the main process, which writes `bad_audio.txt` (see
bad_audio.py).

`make_pipeline` returns a `Pipeline`: a grain iterator (orbax saves and restores it like any grain iterator) that
must be closed, `with make_pipeline(...) as it:` or `it.close()` in a `finally`: with worker_count > 0 that stops
grain's worker processes and unlinks the shared memory holding the batches they prefetched, which would otherwise
leak and be reported by Python's resource tracker at exit.
"""
from __future__ import annotations

import dataclasses
import math
import os
from multiprocessing import shared_memory
from typing import Any, Protocol

import grain
import numpy as np

from uamix_jax.audio.fbank import FRAME_LENGTH, SAMPLE_RATE
from uamix_jax.audio.io import AudioLoadError, load_audio
from uamix_jax.data.bad_audio import BadAudioLog
from uamix_jax.data.manifest import Manifest

MAX_LOAD_ATTEMPTS = 16  # a clip and up to 15 replacements; more in a row means the dataset itself is broken
_SHUFFLE, _CROP, _REPLACE = 0, 1, 2  # independent random streams per purpose


class BadAudioError(AudioLoadError):
    """The AudioLoadError that on_bad_audio='error' raises. Unlike its base class it pickles (path, reason), so it
    reaches the main process intact from a grain worker (grain re-raises the worker's exception there)."""

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.path, self.reason)


class AudioSource(Protocol):
    """Random access to a dataset's clips: what the pipeline needs from a manifest or a TFDS split."""

    labels: np.ndarray  # int32 [N]

    def __len__(self) -> int: ...

    def load(self, index: int, sample_rate: int) -> np.ndarray:
        """float32 mono waveform of clip `index` at `sample_rate`; raises AudioLoadError when it cannot."""

    def name(self, index: int) -> str:
        """How logs name clip `index` (its path)."""


class FileSource:
    """Clips of a file manifest, decoded with `load_audio` (mono, resampled)."""

    def __init__(self, manifest: Manifest):
        self.paths = manifest.paths
        self.labels = manifest.labels
        self.multi_labels = manifest.multi_labels

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int, sample_rate: int) -> np.ndarray:
        return load_audio(self.paths[index], sample_rate)

    def name(self, index: int) -> str:
        return self.paths[index]


def as_source(source_or_manifest: Manifest | AudioSource) -> AudioSource:
    """A Manifest becomes a FileSource (or a TfdsSource for TFDS manifests); anything else must be an AudioSource."""
    if isinstance(source_or_manifest, Manifest):
        if source_or_manifest.tfds is not None:
            from uamix_jax.data.tfds_source import TfdsSource  # TensorFlow only on this path
            return TfdsSource(source_or_manifest)
        return FileSource(source_or_manifest)
    for attr in ("load", "name", "labels", "__len__"):
        if not hasattr(source_or_manifest, attr):
            raise TypeError(f"make_pipeline needs a Manifest or an AudioSource; {type(source_or_manifest).__name__} "
                            f"has no {attr!r}")
    return source_or_manifest


def steps_per_epoch(n_clips: int, global_batch: int, drop_remainder: bool = True) -> int:
    """Global batches per epoch: floor(n / G) with drop_remainder, else ceil(n / G)."""
    if global_batch <= 0:
        raise ValueError(f"global_batch must be positive, got {global_batch}")
    return n_clips // global_batch if drop_remainder else -(-n_clips // global_batch)


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """Which clip fills which row: see the module docstring for the order."""

    num_clips: int
    batch_size: int
    process_index: int
    process_count: int
    shuffle: bool
    seed: int
    drop_remainder: bool

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.process_count

    @property
    def batches_per_epoch(self) -> int:
        return steps_per_epoch(self.num_clips, self.global_batch, self.drop_remainder)

    def order(self, epoch: int) -> np.ndarray:
        """Clip indices in epoch order."""
        if not self.shuffle:
            return np.arange(self.num_clips)
        return np.random.default_rng([_SHUFFLE, self.seed, epoch]).permutation(self.num_clips)

    def positions(self, local_batch: int) -> tuple[int, np.ndarray]:
        """(epoch, positions [b] in that epoch's order) of this process's `local_batch`-th batch overall."""
        epoch, j = divmod(local_batch, self.batches_per_epoch)
        start = j * self.global_batch + self.process_index * self.batch_size
        return epoch, start + np.arange(self.batch_size)


class _BatchBuilder:
    """Builds batch k of this process (decode, resample, crop/pad); runs in grain worker processes."""

    def __init__(self, source: AudioSource, plan: BatchPlan, clip_samples: int, sample_rate: int, train: bool,
                 on_bad_audio: str, multi_hot: bool = False):
        self.source, self.plan, self.clip_samples, self.sample_rate = source, plan, clip_samples, sample_rate
        self.train, self.on_bad_audio, self.multi_hot = train, on_bad_audio, multi_hot
        # one 25 ms fbank frame; shorter clips give no features
        self.min_samples = math.ceil(FRAME_LENGTH * sample_rate / SAMPLE_RATE)
        self._orders: dict[int, np.ndarray] = {}
        self._known_bad: dict[int, str] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 2:  # consecutive batches need at most the current and the next epoch
                self._orders.pop(min(self._orders))
            self._orders[epoch] = self.plan.order(epoch)
        return self._orders[epoch]

    def _load_one(self, index: int) -> np.ndarray:
        wave = self.source.load(index, self.sample_rate)
        if wave.shape[0] < self.min_samples:
            raise AudioLoadError(self.source.name(index), f"only {wave.shape[0]} samples at {self.sample_rate} Hz, "
                                 f"shorter than one 25 ms analysis frame ({self.min_samples} samples)")
        return wave

    def _replacements(self, epoch: int, position: int) -> np.ndarray:
        """Clips that may stand in for the one at `position` of `epoch`'s order, in the order they are tried.

        First the clips at the positions q ≡ position (mod G) of the epoch's order, q ≠ position, in a seeded random
        order: none of them is in this global batch (its positions are one of each residue) and no other row's
        replacement can be one of them (a different row has a different residue), so a sample id occurs once per
        global batch, whatever the process count. Datasets of fewer than ~16 G clips run out of those; the
        remaining attempts draw from all clips (and may repeat one).
        """
        g = self.plan.global_batch
        candidates = np.arange(position % g, self.plan.num_clips, g)
        candidates = candidates[candidates != position]
        rng = np.random.default_rng([_REPLACE, self.plan.seed, epoch, position])
        take = min(candidates.size, MAX_LOAD_ATTEMPTS - 1)
        picked = self._order(epoch)[candidates[rng.choice(candidates.size, take, replace=False)]]
        fallback = rng.integers(self.plan.num_clips, size=MAX_LOAD_ATTEMPTS - 1 - take)
        return np.concatenate([picked, fallback]).astype(np.int64)

    def _load(self, epoch: int, position: int) -> tuple[int, np.ndarray, list[tuple[int, str]]]:
        """(index actually loaded, waveform, [(bad index, reason)]) for `position` of `epoch`'s order: its own clip
        or, when that fails to load, the first of `_replacements` that loads."""
        failures: list[tuple[int, str]] = []
        index = int(self._order(epoch)[position])
        candidates = None
        candidate = index
        for attempt in range(MAX_LOAD_ATTEMPTS):
            if candidate in self._known_bad:  # a file that failed once fails again; skip its (slow) decode
                failures.append((candidate, self._known_bad[candidate]))
            else:
                try:
                    return candidate, self._load_one(candidate), failures
                except AudioLoadError as e:
                    if self.on_bad_audio == "error":
                        raise BadAudioError(e.path, e.reason) from e
                    self._known_bad[candidate] = e.reason
                    failures.append((candidate, e.reason))
            if candidates is None:
                candidates = self._replacements(epoch, position)
            if attempt < MAX_LOAD_ATTEMPTS - 1:
                candidate = int(candidates[attempt])
        shown = "; ".join(f"{self.source.name(i)}: {r}" for i, r in failures[:3])
        raise RuntimeError(f"{MAX_LOAD_ATTEMPTS} clips in a row failed to load, starting at clip {index} "
                           f"({shown}; ...). The dataset looks broken: check config.data.root and the files.")

    def _crop_start(self, n: int, epoch: int, index: int) -> int:
        if n <= self.clip_samples:
            return 0
        if not self.train:
            return (n - self.clip_samples) // 2
        rng = np.random.default_rng([_CROP, self.plan.seed, epoch, index])
        return int(rng.integers(0, n - self.clip_samples + 1))

    def __call__(self, local_batch: int, _: Any = None) -> dict[str, Any]:
        epoch, positions = self.plan.positions(local_batch)
        b, clip = self.plan.batch_size, self.clip_samples
        waveform = np.zeros((b, clip), np.float32)
        length = np.zeros((b,), np.int32)
        index = np.full((b,), -1, np.int32)
        label = np.full((b,), -1, np.int32)
        mask = positions < self.plan.num_clips
        bad: list[tuple[int, str]] = []
        for row in np.flatnonzero(mask):  # one file per row: decoding is per file anyway
            loaded, wave, failures = self._load(epoch, int(positions[row]))
            bad.extend(failures)
            start = self._crop_start(wave.shape[0], epoch, loaded)
            segment = wave[start:start + clip]
            waveform[row, :segment.shape[0]] = segment
            length[row], index[row], label[row] = segment.shape[0], loaded, self.source.labels[loaded]
        batch = {"waveform": waveform, "length": length, "index": index, "label": label, "mask": mask,
                 "_bad": tuple(bad)}
        if self.multi_hot:  # padding rows (index -1) have no label: all False
            multi_labels = self.source.multi_labels
            batch["multi_hot"] = np.zeros((b, multi_labels.num_classes), bool)
            batch["multi_hot"][mask] = multi_labels.dense(index[mask])
        return batch


class _ReportBadAudio:
    """Main-process step: moves the batch's bad-clip reports into the log and returns the batch without them."""

    def __init__(self, source: AudioSource, log: BadAudioLog):
        self.source, self.log = source, log

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        for i, reason in batch.pop("_bad"):
            self.log.record(self.source.name(int(i)), reason)
        return batch


def _unlink_shared_memory_now(array: Any) -> None:
    """Unlinks the name of the shared-memory block behind a batch array from a grain worker (a no-op for others).

    grain's SharedMemoryArray (grain 0.2: attributes `shm`, `_unlink_on_del`) unlinks its block when it is deleted;
    doing it now instead, and telling the array so, keeps the data mapped and readable and leaves no name to leak.
    """
    shm = getattr(array, "shm", None)
    if isinstance(shm, shared_memory.SharedMemory) and getattr(array, "_unlink_on_del", False):
        shm.unlink()
        array._unlink_on_del = False  # its __del__ then only unmaps


class Pipeline(grain.DatasetIterator):
    """The batch iterator `make_pipeline` returns: grain's iterator with `close()` and context-manager support.

    With worker processes each array of a batch arrives in a shared-memory block that the receiving process must
    unlink. Two things would leak blocks, each reported by Python's resource tracker at exit ("There appear to be
    N leaked shared_memory objects"):
      - batches the workers had prefetched: `close()` (idempotent) closes grain's iterator chain, which stops the
        workers and unlinks them (grain does so otherwise only when the iterator is garbage collected, which
        CPython does not promise before exit);
      - batches handed out and still referenced at exit (the last step's, possibly aliased by a jax CPU array):
        `__next__` unlinks each block's name as soon as the batch arrives. On POSIX the mapping stays valid until
        the array is freed, so nothing is copied, and a killed process leaves no name behind either.
    A subclass of grain.DatasetIterator (not a plain wrapper) so that `grain.checkpoint.CheckpointSave/Restore`
    store its state as JSON, as for grain's own iterators.
    """

    def __init__(self, iterator: grain.DatasetIterator):
        super().__init__(iterator)

    def __next__(self) -> dict[str, np.ndarray]:
        self._assert_not_closed()
        batch = next(self._parent)
        for value in batch.values():
            _unlink_shared_memory_now(value)
        return batch

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        super().close()
        # Drop grain's closed iterator chain now: left alive until interpreter shutdown, its __del__ calls close()
        # again when grain's module globals are gone and prints "Exception ignored ... AttributeError" noise.
        self._parents = ()


def has_multi_label_clips(source: Manifest | AudioSource) -> bool:
    """True when some clip of the source carries more than one label (e.g. AudioSet): then `make_pipeline`'s batches
    carry `multi_hot` by default."""
    multi_labels = getattr(source, "multi_labels", None)
    return multi_labels is not None and len(multi_labels) > 0 and int(np.diff(multi_labels.offsets).max()) > 1


def _mark_flags_parsed() -> None:
    # grain's worker processes read absl flags and fail with UnparsedFlagAccessError when the program did not
    # parse them (scripts, notebooks, tests); google/grain#1355. Their defaults are what we want.
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def bad_audio_log_path(path: str | os.PathLike, process_index: int, process_count: int) -> str:
    """`bad_audio.txt` for one process; with several processes each writes `bad_audio.process<p>.txt`."""
    path = os.fspath(path)
    if process_count == 1:
        return path
    stem, ext = os.path.splitext(path)
    return f"{stem}.process{process_index}{ext}"


def make_pipeline(source_or_manifest: Manifest | AudioSource, *, batch_size: int, clip_samples: int, seed: int,
                  train: bool, process_index: int = 0, process_count: int = 1, worker_count: int = 0,
                  num_epochs: int | None = None, on_bad_audio: str = "skip",
                  bad_audio_log: str | os.PathLike | BadAudioLog | None = None, sample_rate: int = SAMPLE_RATE,
                  drop_remainder: bool = True, prefetch: int = 2, read_threads: int = 1,
                  multi_hot: bool | None = None) -> Pipeline:
    """A grain iterator of per-process batches: dicts of numpy arrays with fixed shapes,

      waveform float32 [b, clip_samples] (zeros after `length`), length int32 [b] (valid samples),
      index int32 [b] (manifest row of the clip delivered: the sample id), label int32 [b],
      mask bool [b] (False on the padding rows of the last global batch when drop_remainder=False),
      and with multi_hot: multi_hot bool [b, C] (every label of the clip; all False on padding rows).

    train=True: reshuffled each epoch from `seed`, random crop keyed by (seed, epoch, index); train=False: manifest
    order, centre crop. Shorter clips are zero padded. num_epochs=None repeats forever.
    Resume: `it.get_state()` is a JSON-serialisable dict; `set_state(state)` on a pipeline made with the same
    arguments (worker_count included: the state's format depends on it) continues at the next batch. orbax can
    also store the iterator itself with `grain.checkpoint.CheckpointSave(it)`.
    worker_count > 0 decodes and resamples in that many grain processes. Close the pipeline when done (`with` or
    `it.close()`): see `Pipeline`.
    on_bad_audio='skip' replaces a failing clip by a seeded choice of another clip not in the same global batch
    (`_BatchBuilder._replacements`) and records it in `bad_audio_log`
    (a path, or a BadAudioLog whose `.count` the caller reads); 'error' raises a BadAudioError (an AudioLoadError)
    naming the file and the reason. prefetch / read_threads: batches buffered and threads per process.
    multi_hot: True/False, or None for `has_multi_label_clips` (multi-label datasets such as AudioSet); needs a
    source with `multi_labels` (a Manifest's `MultiLabels`).
    """
    source = as_source(source_or_manifest)
    if multi_hot is None:
        multi_hot = has_multi_label_clips(source)
    elif multi_hot and getattr(source, "multi_labels", None) is None:
        raise ValueError(f"make_pipeline(multi_hot=True): the source {type(source).__name__} has no multi_labels "
                         f"(per-clip label sets); build it from a Manifest")
    if on_bad_audio not in ("skip", "error"):
        raise ValueError(f"on_bad_audio must be 'skip' or 'error', got {on_bad_audio!r}")
    if batch_size <= 0 or clip_samples <= 0 or sample_rate <= 0:
        raise ValueError(f"batch_size, clip_samples and sample_rate must be positive, got {batch_size}, "
                         f"{clip_samples}, {sample_rate}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must lie in [0, process_count={process_count})")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be None (forever) or >= 1, got {num_epochs}")
    plan = BatchPlan(num_clips=len(source), batch_size=batch_size, process_index=process_index,
                     process_count=process_count, shuffle=train, seed=seed, drop_remainder=drop_remainder)
    if plan.num_clips == 0:
        raise ValueError("make_pipeline: the dataset holds no clips (check the manifest's filter and data.root)")
    if plan.batches_per_epoch == 0:
        raise ValueError(f"{len(source)} clips make no global batch of {plan.global_batch} ({batch_size} per process x "
                         f"{process_count} processes) with drop_remainder=True; lower the batch size or set "
                         f"drop_remainder=False")
    if isinstance(bad_audio_log, BadAudioLog):
        log = bad_audio_log
    else:
        log = BadAudioLog(None if bad_audio_log is None
                          else bad_audio_log_path(bad_audio_log, process_index, process_count))

    ds = grain.MapDataset.range(plan.batches_per_epoch).repeat(num_epochs)
    ds = ds.map_with_index(_BatchBuilder(source, plan, clip_samples, sample_rate, train, on_bad_audio, multi_hot))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))
    if worker_count > 0:
        _mark_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=prefetch))
    return Pipeline(iter(ds.map(_ReportBadAudio(source, log))))
