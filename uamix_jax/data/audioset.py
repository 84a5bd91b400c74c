"""AudioSet in its published form: the `*_segments.csv` lists, `class_labels_indices.csv`, and a folder of clips.

The segment CSVs have three comment lines, the last one being the header
`# YTID, start_seconds, end_seconds, positive_labels`, then rows like
`--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"`. `class_labels_indices.csv` is `index,mid,display_name`.

Google publishes no audio, so each user's download names clips its own way. A clip is matched to its YouTube id
(11 characters) when its file name, without extension, is one of
  `<id>`                                         (AST's and most downloaders' naming)
  `Y<id>`                                        (PANNs / AudioMAE data preparation)
  `<id>_<anything>` or `Y<id>_<anything>`        (e.g. `<id>_30000`, `Y<id>_30.000_40.000` as DCASE names them)
with extension wav, flac, ogg, opus, mp3 or m4a, anywhere below the audio folder. Listed segments with no file are
left out with a warning: YouTube removals make every copy of AudioSet incomplete.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Sequence

from absl import logging

from uamix_jax.data.manifest import (
    AUDIO_EXTENSIONS, DatasetLayoutError, Manifest, build_manifest, common_prefix, read_csv_rows, require_dir,
    require_file)

SEGMENT_FILES = {
    "balanced_train": "balanced_train_segments.csv",
    "eval": "eval_segments.csv",
    "unbalanced_train": "unbalanced_train_segments.csv",
}
SEGMENTS_HEADER = "# YTID, start_seconds, end_seconds, positive_labels"
YTID_LENGTH = 11


def read_segments(path: str) -> list[tuple[str, list[str]]]:
    """[(YouTube id, [label mids])] from one `*_segments.csv`; raises if the header comment line is absent."""
    require_file(path, "an AudioSet segment list")
    header_seen, rows = False, []
    with open(path, newline="", encoding="utf-8") as f:
        body = []
        for line in f:
            if line.startswith("#"):
                cols = [c.strip() for c in line[1:].split(",")]
                header_seen |= cols[:4] == ["YTID", "start_seconds", "end_seconds", "positive_labels"]
            elif line.strip():
                body.append(line)
    if not header_seen:
        raise DatasetLayoutError(f"{path}: no header line {SEGMENTS_HEADER!r} among its '#' comment lines; "
                                 f"expected an AudioSet segments CSV as published")
    for line_no, row in enumerate(csv.reader(body, skipinitialspace=True), start=1):
        if len(row) != 4:
            raise DatasetLayoutError(f"{path}: data row {line_no} {row!r} does not have the 4 columns of "
                                     f"{SEGMENTS_HEADER!r}")
        rows.append((row[0], [m.strip() for m in row[3].split(",") if m.strip()]))
    return rows


def _candidate_ids(stem: str) -> list[str]:
    cands = [stem]
    if stem.startswith("Y"):
        cands.append(stem[1:])
    if len(stem) > YTID_LENGTH and stem[YTID_LENGTH] == "_":
        cands.append(stem[:YTID_LENGTH])
    if stem.startswith("Y") and len(stem) > YTID_LENGTH + 1 and stem[YTID_LENGTH + 1] == "_":
        cands.append(stem[1:YTID_LENGTH + 1])
    return cands


def index_clips(folder: str, wanted: set[str]) -> dict[str, str]:
    """Maps each YouTube id in `wanted` to the first audio file below `folder` named after it (see module doc)."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for fname in sorted(filenames):
            stem, ext = os.path.splitext(fname)
            if ext.lower() not in AUDIO_EXTENSIONS:
                continue
            for cand in _candidate_ids(stem):
                if cand in wanted and cand not in found:
                    found[cand] = os.path.join(dirpath, fname)
                    break
    return found


def _find_csv(root: str, csv_dir: str | None, fname: str) -> str | None:
    dirs = [csv_dir] if csv_dir else [root, os.path.join(root, "metadata"), os.path.join(root, "meta")]
    return next((os.path.join(d, fname) for d in dirs if os.path.isfile(os.path.join(d, fname))), None)


def read_audioset(root: str, *, subsets: Sequence[str] | None = None, audio_dir: str | None = None,
                  csv_dir: str | None = None) -> Manifest:
    """AudioSet: segments CSVs + `class_labels_indices.csv` (in root, root/metadata or `csv_dir`) + clips below
    `audio_dir` (default root). Multi-label over the 527 classes of `class_labels_indices.csv` (class id = `index`).

    subsets: any of 'balanced_train' (AudioSet-20K), 'eval', 'unbalanced_train'; None = every segments CSV present.
    Split names are the subset names; the primary label is the first label listed for the segment; clip ids are the
    YouTube ids (the first subset listing an id keeps it).
    """
    root = os.path.abspath(require_dir(root, "the AudioSet folder (segments CSVs + clips)"))
    labels_csv = _find_csv(root, csv_dir, "class_labels_indices.csv")
    if labels_csv is None:
        raise DatasetLayoutError(f"missing file class_labels_indices.csv (index,mid,display_name) in "
                                 f"{csv_dir or root} (or {root}/metadata); download it with the segment lists")
    class_rows = read_csv_rows(labels_csv, ["index", "mid", "display_name"])
    indices = [int(r["index"]) for r in class_rows]
    if indices != list(range(len(indices))):
        raise DatasetLayoutError(f"{labels_csv}: `index` must run 0..{len(indices) - 1} in order")
    mid_to_class = {r["mid"]: int(r["index"]) for r in class_rows}

    wanted_subsets = list(SEGMENT_FILES) if subsets is None else list(subsets)
    unknown = [s for s in wanted_subsets if s not in SEGMENT_FILES]
    if unknown:
        raise ValueError(f"read_audioset: unknown subsets {unknown}; choose from {list(SEGMENT_FILES)}")
    segments: dict[str, tuple[str, list[int]]] = {}
    csv_found = []
    for subset in wanted_subsets:
        path = _find_csv(root, csv_dir, SEGMENT_FILES[subset])
        if path is None:
            if subsets is not None:
                raise DatasetLayoutError(f"missing file {SEGMENT_FILES[subset]} (subset {subset!r}) in "
                                         f"{csv_dir or root}; expected AudioSet's published segment list")
            continue
        csv_found.append(path)
        for ytid, mids in read_segments(path):
            bad = [m for m in mids if m not in mid_to_class]
            if bad:
                raise DatasetLayoutError(f"{path}: segment {ytid} has labels {bad} that are not in {labels_csv}")
            segments.setdefault(ytid, (subset, [mid_to_class[m] for m in mids]))
    if not csv_found:
        raise DatasetLayoutError(f"{csv_dir or root}: no AudioSet segment list found; expected one of "
                                 f"{list(SEGMENT_FILES.values())}")

    folder = os.path.abspath(audio_dir) if audio_dir else root
    clips = index_clips(folder, set(segments))
    if not clips:
        raise DatasetLayoutError(
            f"{folder}: none of the {len(segments)} segments listed in {[os.path.basename(p) for p in csv_found]} "
            f"has an audio file; expected names like <id>.wav, Y<id>.wav or Y<id>_<start>_<end>.wav")
    missing = [y for y in segments if y not in clips]
    if missing:
        logging.warning("AudioSet: %d of %d listed segments have no audio file under %s and are left out "
                        "(first: %s)", len(missing), len(segments), folder, missing[:5])
    ytids = [y for y in segments if y in clips]
    return build_manifest(
        "audioset", [clips[y] for y in ytids], [segments[y][1] for y in ytids],
        [r["display_name"] for r in class_rows], splits=[segments[y][0] for y in ytids], clip_ids=ytids,
        prefix=common_prefix(folder))
