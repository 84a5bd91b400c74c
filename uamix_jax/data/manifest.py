"""The `Manifest`: which clips a dataset holds, with their labels, splits and folds, as numpy columns.

A manifest is the one thing every reader returns and every consumer (the grain pipeline, the few-shot evaluator,
the dataset summary) reads. It holds no per-clip Python objects: strings live in `StringColumn`s (one numpy bytes
array plus a shared prefix) and multi-label sets in a CSR `MultiLabels`, so AudioSet's 2M rows stay around
100-200 MB.

This module also has the two generic readers: a CSV manifest (`path,label[,split,fold]`) and a folder-per-class
layout. The published dataset layouts live in `layouts.py` and `audioset.py`.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

# The one list of audio file extensions every reader matches (case-insensitively).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aiff", ".aif")
NO_SPLIT = "all"  # the split of every clip in datasets that publish no split (ESC-50, folder layouts)


class DatasetLayoutError(ValueError):
    """A dataset folder or file that does not have the layout its reader expects (missing file, wrong header)."""


# --------------------------------------------------------------------------------------------------------- columns
@dataclasses.dataclass(frozen=True, eq=False)
class StringColumn:
    """N strings stored as one numpy bytes array (UTF-8) after a shared `prefix`.

    `col[i]` gives a `str`; `col[mask_or_indices]` gives a `StringColumn`; `col.isin(values)` gives bool [N].
    """

    values: np.ndarray  # dtype 'S', shape [N]
    prefix: str = ""

    def __post_init__(self):
        if self.values.ndim != 1 or self.values.dtype.kind != "S":
            raise TypeError(f"StringColumn.values must be a 1-D bytes ('S') array, got {self.values.dtype} "
                            f"{self.values.shape}")

    @classmethod
    def from_strings(cls, strings: Iterable[str], prefix: str = "") -> StringColumn:
        """Stores `strings`, each of which must start with `prefix` (it is factored out to save memory)."""
        cut = len(prefix)
        encoded = []
        for s in strings:
            if not s.startswith(prefix):
                raise ValueError(f"{s!r} does not start with the column prefix {prefix!r}")
            encoded.append(s[cut:].encode("utf-8"))
        values = np.array(encoded, dtype=bytes) if encoded else np.zeros((0,), dtype="S1")
        return cls(values=values, prefix=prefix)

    @classmethod
    def constant(cls, value: str, n: int) -> StringColumn:
        return cls(values=np.full((n,), value.encode("utf-8"), dtype=f"S{max(1, len(value.encode()))}"))

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            return self.prefix + self.values[key].decode("utf-8")
        return StringColumn(values=self.values[key], prefix=self.prefix)

    def __iter__(self) -> Iterator[str]:
        for v in self.values:
            yield self.prefix + v.decode("utf-8")

    def tolist(self) -> list[str]:
        return list(self)

    def isin(self, candidates: str | Iterable[str]) -> np.ndarray:
        """bool [N]: which entries equal one of `candidates` (compared as bytes, without decoding every row)."""
        if isinstance(candidates, str):
            candidates = [candidates]
        wanted = [c[len(self.prefix):].encode("utf-8") for c in candidates if c.startswith(self.prefix)]
        if not wanted:
            return np.zeros((len(self),), dtype=bool)
        return np.isin(self.values, np.array(wanted, dtype=bytes))

    def unique(self) -> list[str]:
        return [self.prefix + v.decode("utf-8") for v in np.unique(self.values)]

    def __repr__(self) -> str:
        head = ", ".join(repr(self[i]) for i in range(min(3, len(self))))
        return f"StringColumn([{head}{', ...' if len(self) > 3 else ''}], n={len(self)})"


@dataclasses.dataclass(frozen=True, eq=False)
class MultiLabels:
    """Per-clip label sets in CSR form: clip i has classes `classes[offsets[i]:offsets[i+1]]` (int32, sorted).

    The compact equivalent of a multi-hot [N, C] matrix; `dense(rows)` builds that matrix for the rows asked for.
    """

    offsets: np.ndarray  # int64 [N + 1]
    classes: np.ndarray  # int32 [nnz]
    num_classes: int

    def __post_init__(self):
        if self.offsets.ndim != 1 or self.offsets.shape[0] < 1 or self.offsets[0] != 0:
            raise ValueError("MultiLabels.offsets must be a 1-D array starting at 0")
        if int(self.offsets[-1]) != self.classes.shape[0]:
            raise ValueError(f"MultiLabels: offsets end at {int(self.offsets[-1])} but there are "
                             f"{self.classes.shape[0]} class entries")

    @classmethod
    def from_lists(cls, label_sets: Sequence[Sequence[int]], num_classes: int) -> MultiLabels:
        lengths = np.fromiter((len(s) for s in label_sets), dtype=np.int64, count=len(label_sets))
        offsets = np.zeros((len(label_sets) + 1,), dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = [c for s in label_sets for c in sorted(set(s))] if label_sets else []
        classes = np.asarray(flat, dtype=np.int32)
        if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
            raise ValueError(f"MultiLabels: class ids must lie in [0, {num_classes}), got "
                             f"[{classes.min()}, {classes.max()}]")
        return cls(offsets=offsets, classes=classes, num_classes=num_classes)

    @classmethod
    def from_labels(cls, labels: np.ndarray, num_classes: int) -> MultiLabels:
        """Single-label datasets: each clip's set is {label}, or empty when the label is -1 (unknown)."""
        known = labels >= 0
        offsets = np.zeros((labels.shape[0] + 1,), dtype=np.int64)
        np.cumsum(known, out=offsets[1:])
        return cls(offsets=offsets, classes=labels[known].astype(np.int32), num_classes=num_classes)

    def __len__(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.classes[self.offsets[i]:self.offsets[i + 1]]

    def select(self, indices: np.ndarray) -> MultiLabels:
        starts, ends = self.offsets[indices], self.offsets[indices + 1]
        lengths = ends - starts
        offsets = np.zeros((indices.shape[0] + 1,), dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # Gather every selected run at once: output position p reads classes[starts[r] + p - offsets[r]], r = row(p).
        rows = np.repeat(np.arange(indices.shape[0]), lengths)
        gather = starts[rows] + (np.arange(offsets[-1]) - offsets[rows])
        return MultiLabels(offsets=offsets, classes=self.classes[gather], num_classes=self.num_classes)

    def dense(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Multi-hot bool [len(rows), C] (all rows when `rows` is None)."""
        sub = self if rows is None else self.select(np.asarray(rows, dtype=np.int64))
        out = np.zeros((len(sub), self.num_classes), dtype=bool)
        row_of = np.repeat(np.arange(len(sub)), np.diff(sub.offsets))
        out[row_of, sub.classes] = True
        return out


@dataclasses.dataclass(frozen=True)
class TfdsRef:
    """Where a TFDS-backed manifest reads its records: `tfds.data_source(name, split=split, data_dir=data_dir)`.

    `audio_key` / `label_key` name the features ('/'-separated for nested ones, e.g. 'instrument/label').
    """

    name: str
    split: str
    data_dir: str | None
    audio_key: str = "audio"
    label_key: str | None = "label"
    sample_rate: int | None = None  # overrides the Audio feature's sample_rate when that is unset


# -------------------------------------------------------------------------------------------------------- manifest
@dataclasses.dataclass(frozen=True, eq=False)
class Manifest:
    """The clips of one dataset. Every column has one row per clip.

    paths: absolute file paths (for TFDS manifests, display names `tfds:<name>/<split>/<record>`).
    labels: int32 [N], primary label (-1 unknown). multi_labels: all labels per clip (`MultiLabels`).
    splits: the dataset's own split names ('train'/'valid'/'test'..., 'all' where none is published).
    folds: int32 [N] (-1 none). clip_ids: unique str ids. class_names[label] is the label's name.
    tfds / records: set only for TFDS manifests (the data source and each row's record index in it).
    """

    name: str
    paths: StringColumn
    labels: np.ndarray
    multi_labels: MultiLabels
    splits: StringColumn
    folds: np.ndarray
    clip_ids: StringColumn
    class_names: tuple[str, ...]
    tfds: TfdsRef | None = None
    records: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.paths)
        lengths = {"labels": self.labels.shape[0], "multi_labels": len(self.multi_labels),
                   "splits": len(self.splits), "folds": self.folds.shape[0], "clip_ids": len(self.clip_ids)}
        if self.records is not None:
            lengths["records"] = self.records.shape[0]
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise ValueError(f"Manifest {self.name!r}: columns must all have {n} rows (as `paths`), got {wrong}")
        if self.labels.dtype != np.int32 or self.folds.dtype != np.int32:
            raise TypeError(f"Manifest {self.name!r}: labels and folds must be int32, got "
                            f"{self.labels.dtype} and {self.folds.dtype}")
        if n and self.labels.max(initial=-1) >= len(self.class_names):
            raise ValueError(f"Manifest {self.name!r}: label {int(self.labels.max())} has no class name "
                             f"({len(self.class_names)} class names)")
        if self.multi_labels.num_classes != len(self.class_names):
            raise ValueError(f"Manifest {self.name!r}: multi_labels has {self.multi_labels.num_classes} classes, "
                             f"class_names {len(self.class_names)}")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def select(self, mask_or_indices: np.ndarray | Sequence[int]) -> Manifest:
        """The rows picked by a bool mask [N] or an index array, in that order; class names are kept as they are."""
        sel = np.asarray(mask_or_indices)
        if sel.dtype == bool:
            if sel.shape != (len(self),):
                raise ValueError(f"Manifest.select: mask has shape {sel.shape}, expected ({len(self)},)")
            sel = np.flatnonzero(sel)
        sel = sel.astype(np.int64, copy=False)
        if sel.size and (sel.min() < 0 or sel.max() >= len(self)):
            raise IndexError(f"Manifest.select: indices must lie in [0, {len(self)})")
        return dataclasses.replace(
            self, paths=self.paths[sel], labels=self.labels[sel], multi_labels=self.multi_labels.select(sel),
            splits=self.splits[sel], folds=self.folds[sel], clip_ids=self.clip_ids[sel],
            records=None if self.records is None else self.records[sel])

    def filter(self, split: str | Sequence[str] | None = None, folds: int | Sequence[int] | None = None) -> Manifest:
        """The clips whose split is (one of) `split` and whose fold is (one of) `folds`; None keeps everything."""
        keep = np.ones((len(self),), dtype=bool)
        if split is not None:
            names = [split] if isinstance(split, str) else list(split)
            known = set(self.splits.unique())
            unknown = [s for s in names if s not in known]
            if unknown:
                raise ValueError(f"Manifest {self.name!r} has no split {unknown}; its splits are {sorted(known)}")
            keep &= self.splits.isin(names)
        if folds is not None:
            keep &= np.isin(self.folds, np.atleast_1d(np.asarray(folds, dtype=np.int32)))
        return self.select(keep)


def build_manifest(name: str, paths: Sequence[str], label_sets: Sequence[Sequence[int]], class_names: Sequence[str],
                   *, splits: Sequence[str] | str = NO_SPLIT, folds: Sequence[int] | None = None,
                   clip_ids: Sequence[str] | None = None, prefix: str = "") -> Manifest:
    """Assembles a Manifest from per-clip lists. The primary label is the first of each label set (-1 if empty).

    Rows with duplicate clip ids are an error (the queue uses row positions as sample ids and ids must name one clip).
    """
    n = len(paths)
    labels = np.fromiter((s[0] if len(s) else -1 for s in label_sets), dtype=np.int32, count=n)
    ids = list(paths) if clip_ids is None else list(clip_ids)
    id_col = StringColumn.from_strings(ids)
    if n and np.unique(id_col.values).shape[0] != n:
        uniq, counts = np.unique(id_col.values, return_counts=True)
        dups = [u.decode() for u in uniq[counts > 1][:5]]
        raise DatasetLayoutError(f"{name}: clip ids must be unique; repeated: {dups}")
    split_col = StringColumn.constant(splits, n) if isinstance(splits, str) else StringColumn.from_strings(splits)
    return Manifest(
        name=name,
        paths=StringColumn.from_strings(paths, prefix=prefix),
        labels=labels,
        multi_labels=MultiLabels.from_lists(label_sets, len(class_names)),
        splits=split_col,
        folds=np.full((n,), -1, np.int32) if folds is None else np.asarray(folds, dtype=np.int32),
        clip_ids=id_col,
        class_names=tuple(class_names),
    )


# ----------------------------------------------------------------------------------------------- file helpers
def require_file(path: str, what: str) -> str:
    """Returns `path` if it is a file, else raises DatasetLayoutError naming it and what it should hold."""
    if not os.path.isfile(path):
        raise DatasetLayoutError(f"missing file {path}: expected {what}. Point data.root at the unpacked dataset.")
    return path


def require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise DatasetLayoutError(f"missing folder {path}: expected {what}. Point data.root at the unpacked dataset.")
    return path


def read_csv_rows(path: str, required: Sequence[str], *, expected_header: str | None = None) -> list[dict[str, str]]:
    """Rows of a headed CSV as dicts; raises DatasetLayoutError naming the file when a required column is absent."""
    require_file(path, f"a CSV with columns {','.join(required)}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetLayoutError(
                f"{path}: header {','.join(header) or '(empty file)'} lacks column(s) {missing}; expected "
                f"{expected_header or ','.join(required)}")
        reader.fieldnames = header
        return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def list_audio_files(folder: str) -> list[str]:
    """Audio files under `folder` (recursive, sorted, hidden entries skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames
                     if not f.startswith(".") and f.lower().endswith(AUDIO_EXTENSIONS))
    return sorted(found)


def common_prefix(root: str) -> str:
    return os.path.join(os.path.abspath(root), "")


# ------------------------------------------------------------------------------------------- generic readers
def read_folder(root: str, *, name: str = "folder") -> Manifest:
    """Folder-per-class layout: `root/<class>/**/<clip>.<ext>`, ext one of AUDIO_EXTENSIONS (any case).

    Classes are the sorted sub-folder names (names starting with '.' or '_' are skipped, as SpeechCommands'
    `_background_noise_`); clip ids are paths relative to root; every clip's split is 'all'.
    """
    root = os.path.abspath(require_dir(root, "one sub-folder of audio files per class"))
    classes = sorted(d for d in os.listdir(root)
                     if os.path.isdir(os.path.join(root, d)) and not d.startswith((".", "_")))
    if not classes:
        raise DatasetLayoutError(f"{root}: no class sub-folders found; the folder layout is root/<class>/<clip>.wav")
    paths, label_sets = [], []
    for label, cls in enumerate(classes):
        files = list_audio_files(os.path.join(root, cls))
        paths.extend(files)
        label_sets.extend([(label,)] * len(files))
    if not paths:
        raise DatasetLayoutError(f"{root}: class folders {classes[:5]} hold no audio files ({AUDIO_EXTENSIONS})")
    prefix = common_prefix(root)
    return build_manifest(name, paths, label_sets, classes, clip_ids=[p[len(prefix):] for p in paths], prefix=prefix)


def _parse_label_cell(cell: str) -> list[str]:
    return [t.strip() for t in cell.split(";") if t.strip()]


def read_manifest_csv(root: str, *, name: str = "manifest", csv_name: str = "manifest.csv") -> Manifest:
    """Generic CSV manifest with header `path,label[,split,fold]` (extra columns ignored).

    `root` is the CSV file or a folder holding `csv_name`. Relative paths are relative to the CSV's folder.
    `label` holds class names, several separated by ';' for multi-label clips (the first is the primary label), or
    nothing (unknown, -1; the column may be absent for unlabelled tuning data). If every label is a non-negative
    integer the integers are the class ids (class_names '0'..'C-1'); otherwise class ids follow the sorted names.
    `split` defaults to 'all' and `fold` to -1.
    """
    csv_path = root if os.path.isfile(root) else os.path.join(root, csv_name)
    rows = read_csv_rows(csv_path, ["path"], expected_header="path,label[,split,fold]")
    if not rows:
        raise DatasetLayoutError(f"{csv_path}: the manifest lists no clips")
    base = os.path.dirname(os.path.abspath(csv_path))
    paths = [os.path.normpath(os.path.join(base, r["path"])) for r in rows]
    names_per_row = [_parse_label_cell(r.get("label", "")) for r in rows]
    all_names = sorted({n for names in names_per_row for n in names})
    if all_names and all(n.isdigit() for n in all_names):
        num = max(int(n) for n in all_names) + 1
        class_names = [str(i) for i in range(num)]
        label_sets = [[int(n) for n in names] for names in names_per_row]
    else:
        class_names = all_names
        index = {n: i for i, n in enumerate(class_names)}
        label_sets = [[index[n] for n in names] for names in names_per_row]
    folds = []
    for line, r in enumerate(rows, start=2):
        fold = r.get("fold", "")
        try:
            folds.append(int(fold) if fold else -1)
        except ValueError:
            raise DatasetLayoutError(f"{csv_path}, line {line}: fold {fold!r} is not an integer") from None
    splits = [r.get("split") or NO_SPLIT for r in rows]
    return build_manifest(name, paths, label_sets, class_names, splits=splits, folds=folds,
                          clip_ids=[r["path"] for r in rows])
