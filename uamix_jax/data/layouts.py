"""Readers for the paper's evaluation datasets in their published layouts, and `read_dataset`, which picks one by name.

Each reader takes the folder the user unpacked (`--config.data.root`) and returns a `Manifest`. File names and CSV
headers are the published ones; a missing file or a wrong header raises `DatasetLayoutError` naming the file and
what was expected. Split names: the dataset's own ('train'/'valid'/'test'), 'all' where it publishes none.
AudioSet has its own module (`audioset.py`); the TFDS path is `tfds_source.py`. `read_unlabelled` takes any folder
of audio (no labels), for pretraining and tuning on one's own recordings.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from uamix_jax.data.manifest import (
    AUDIO_EXTENSIONS, DatasetLayoutError, Manifest, build_manifest, common_prefix, list_audio_files, read_csv_rows,
    read_folder, read_manifest_csv, require_dir, require_file)

ESC50_HEADER = "filename,fold,target,category,esc10,src_file,take"
FSDK18_TRAIN_HEADER = "fname,label,manually_verified,freesound_id,license"
FSDK18_TEST_HEADER = "fname,label,usage,freesound_id,license"


def read_esc50(root: str, *, esc10: bool = False) -> Manifest:
    """ESC-50: `meta/esc50.csv` (filename,fold,target,category,esc10,src_file,take) + `audio/<filename>`.

    Labels are `target` (0..49), class_names[target] = `category`; folds 1..5; split 'all' (ESC-50 is used by
    5-fold cross-validation). `esc10=True` keeps the ESC-10 subset, relabelled 0..9 in target order.
    """
    root = os.path.abspath(root)
    rows = read_csv_rows(os.path.join(root, "meta", "esc50.csv"), ["filename", "fold", "target", "category", "esc10"],
                         expected_header=ESC50_HEADER)
    audio = require_dir(os.path.join(root, "audio"), "the ESC-50 clips (audio/<filename>.wav)")
    if esc10:
        rows = [r for r in rows if r["esc10"].lower() == "true"]
    names = {int(r["target"]): r["category"] for r in rows}
    targets = sorted(names)
    if esc10:
        remap = {t: i for i, t in enumerate(targets)}
        class_names = [names[t] for t in targets]
    else:
        if targets != list(range(len(targets))):
            raise DatasetLayoutError(f"{root}/meta/esc50.csv: targets should be 0..{len(targets) - 1}, "
                                     f"got {targets[:10]}")
        remap = {t: t for t in targets}
        class_names = [names[t] for t in targets]
    return build_manifest(
        "esc10" if esc10 else "esc50", [os.path.join(audio, r["filename"]) for r in rows],
        [(remap[int(r["target"])],) for r in rows], class_names, folds=[int(r["fold"]) for r in rows],
        clip_ids=[r["filename"] for r in rows], prefix=common_prefix(audio))


def _read_list(path: str) -> set[str]:
    with open(require_file(path, "one '<word>/<file>.wav' per line"), encoding="utf-8") as f:
        return {line.strip() for line in f if line.strip()}


def read_speechcommands(root: str) -> Manifest:
    """SpeechCommands v2: a folder per word (35 in v2) + `validation_list.txt` + `testing_list.txt`.

    Splits: 'valid' and 'test' from the two lists, 'train' for the rest. `_background_noise_` (and any folder
    starting with '_' or '.') is excluded. Labels follow the sorted word names; clip ids are '<word>/<file>.wav'.
    """
    root = os.path.abspath(require_dir(root, "the SpeechCommands folder (one sub-folder per word)"))
    valid = _read_list(os.path.join(root, "validation_list.txt"))
    test = _read_list(os.path.join(root, "testing_list.txt"))
    manifest = read_folder(root, name="speechcommands")
    ids = manifest.clip_ids.tolist()
    rel = [i.replace(os.sep, "/") for i in ids]
    splits = ["test" if r in test else "valid" if r in valid else "train" for r in rel]
    return build_manifest("speechcommands", manifest.paths.tolist(), [(int(l),) for l in manifest.labels],
                          manifest.class_names, splits=splits, clip_ids=rel, prefix=manifest.paths.prefix)


NSYNTH_SPLITS = ("train", "valid", "test")


def read_nsynth(root: str, *, splits: Sequence[str] = NSYNTH_SPLITS, label: str = "instrument") -> Manifest:
    """NSynth: `nsynth-{train,valid,test}/examples.json` + `audio/<note_str>.wav` (root may also be one such folder).

    `label='instrument'` (default): the paper's 1,006 classes (its Table 1), i.e. NSynth's `instrument` id;
    labels are the loaded instrument ids in increasing order (with all three splits that is the id itself, since
    ids run 0..1005), class_names the matching `instrument_str`. We use the integer id rather than sorting
    `instrument_str` so a label means the same instrument whichever splits are loaded together.
    `label='instrument_family'`: the 11 families (`instrument_family`, names `instrument_family_str`).
    """
    if label not in ("instrument", "instrument_family"):
        raise ValueError(f"read_nsynth: label must be 'instrument' or 'instrument_family', got {label!r}")
    root = os.path.abspath(root)
    if os.path.isfile(os.path.join(root, "examples.json")):  # root is a single split folder, e.g. nsynth-test
        folder_split = os.path.basename(root.rstrip(os.sep)).removeprefix("nsynth-")
        folders = [(folder_split, root)]
    else:
        folders = [(s, os.path.join(root, f"nsynth-{s}")) for s in splits]
        present = [(s, f) for s, f in folders if os.path.isdir(f)]
        if not present:
            raise DatasetLayoutError(f"{root}: none of {[f for _, f in folders]} exists; expected the unpacked "
                                     f"nsynth-train/, nsynth-valid/, nsynth-test/ folders (each with examples.json)")
        folders = present
    notes: list[tuple[str, str, dict[str, Any]]] = []
    for split, folder in folders:
        path = require_file(os.path.join(folder, "examples.json"), "NSynth's note metadata (a JSON object by note_str)")
        with open(path, encoding="utf-8") as f:
            examples = json.load(f)
        for note_str in sorted(examples):
            ex = examples[note_str]
            if label not in ex or f"{label}_str" not in ex:
                raise DatasetLayoutError(f"{path}: note {note_str!r} has no {label!r}/{label}_str fields")
            notes.append((split, os.path.join(folder, "audio", f"{note_str}.wav"), ex))
    ids = sorted({int(ex[label]) for _, _, ex in notes})
    names = {int(ex[label]): ex[f"{label}_str"] for _, _, ex in notes}
    position = {i: k for k, i in enumerate(ids)}
    return build_manifest(
        "nsynth", [p for _, p, _ in notes], [(position[int(ex[label])],) for _, _, ex in notes],
        [names[i] for i in ids], splits=[s for s, _, _ in notes],
        clip_ids=[f"{s}/{ex.get('note_str', os.path.basename(p)[:-4])}" for s, p, ex in notes],
        prefix=common_prefix(root))


VOXCELEB1_SPLITS = {"1": "train", "2": "valid", "3": "test"}


def read_voxceleb1(root: str, *, split_file: str = "iden_split.txt") -> Manifest:
    """VoxCeleb1 identification: `iden_split.txt` ('<1|2|3> idXXXXX/<video>/<n>.wav') + `wav/idXXXXX/<video>/<n>.wav`.

    1 = 'train', 2 = 'valid', 3 = 'test'. The clips may also sit in the two published archives' folders
    `vox1_dev_wav/wav` and `vox1_test_wav/wav`. Labels follow the sorted speaker ids (1,251 speakers).
    """
    root = os.path.abspath(root)
    split_path = require_file(os.path.join(root, split_file), "lines '<1|2|3> idXXXXX/<video>/<n>.wav'")
    wav_dirs = [d for d in (os.path.join(root, "wav"), os.path.join(root, "vox1_dev_wav", "wav"),
                            os.path.join(root, "vox1_test_wav", "wav")) if os.path.isdir(d)]
    if not wav_dirs:
        raise DatasetLayoutError(f"{root}: no wav/ folder (nor vox1_dev_wav/wav, vox1_test_wav/wav); expected "
                                 f"wav/idXXXXX/<video>/<n>.wav")
    entries = []
    with open(split_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[0] not in VOXCELEB1_SPLITS or parts[1].count("/") != 2:
                raise DatasetLayoutError(f"{split_path}, line {line_no}: {line.strip()!r} is not "
                                         f"'<1|2|3> idXXXXX/<video>/<n>.wav'")
            entries.append((VOXCELEB1_SPLITS[parts[0]], parts[1]))
    speakers = sorted({rel.split("/")[0] for _, rel in entries})
    speaker_dir = {s: next((d for d in wav_dirs if os.path.isdir(os.path.join(d, s))), wav_dirs[0]) for s in speakers}
    index = {s: i for i, s in enumerate(speakers)}
    paths = [os.path.join(speaker_dir[rel.split("/")[0]], *rel.split("/")) for _, rel in entries]
    return build_manifest(
        "voxceleb1", paths, [(index[rel.split("/")[0]],) for _, rel in entries], speakers,
        splits=[s for s, _ in entries], clip_ids=[rel for _, rel in entries], prefix=common_prefix(root))


def _first_dir(root: str, names: Sequence[str], what: str) -> str:
    for n in names:
        if os.path.isdir(os.path.join(root, n)):
            return os.path.join(root, n)
    raise DatasetLayoutError(f"{root}: none of the folders {list(names)} exists; expected {what}")


def read_fsdkaggle2018(root: str, *, verified_only: bool = False) -> Manifest:
    """FSDKaggle2018: `FSDKaggle2018.meta/train_post_competition.csv` (fname,label,manually_verified,freesound_id,
    license) and `test_post_competition_scoring_clips.csv` (fname,label,usage,freesound_id,license) + the audio
    folders `FSDKaggle2018.audio_train/` and `FSDKaggle2018.audio_test/` (or `audio_train/`, `audio_test/`).

    Splits 'train' (9,473) and 'test' (the 1,600 scored clips); 41 classes in sorted label order.
    `verified_only=True` keeps the manually verified training clips only.
    """
    root = os.path.abspath(root)
    meta = _first_dir(root, ["FSDKaggle2018.meta", "meta"], "FSDKaggle2018.meta/ with the two CSVs")
    train_rows = read_csv_rows(os.path.join(meta, "train_post_competition.csv"),
                               ["fname", "label", "manually_verified"], expected_header=FSDK18_TRAIN_HEADER)
    test_rows = read_csv_rows(os.path.join(meta, "test_post_competition_scoring_clips.csv"), ["fname", "label"],
                              expected_header=FSDK18_TEST_HEADER)
    if verified_only:
        train_rows = [r for r in train_rows if r["manually_verified"] == "1"]
    train_dir = _first_dir(root, ["FSDKaggle2018.audio_train", "audio_train"], "the training clips")
    test_dir = _first_dir(root, ["FSDKaggle2018.audio_test", "audio_test"], "the test clips")
    class_names = sorted({r["label"] for r in train_rows + test_rows})
    index = {c: i for i, c in enumerate(class_names)}
    rows = [("train", train_dir, r) for r in train_rows] + [("test", test_dir, r) for r in test_rows]
    return build_manifest(
        "fsdkaggle2018", [os.path.join(d, r["fname"]) for _, d, r in rows], [(index[r["label"]],) for _, _, r in rows],
        class_names, splits=[s for s, _, _ in rows], clip_ids=[f"{s}/{r['fname']}" for s, _, r in rows],
        prefix=common_prefix(root))


def read_unlabelled(root: str, *, name: str = "unlabelled") -> Manifest:
    """Every audio file below `root`, recursively (extensions `AUDIO_EXTENSIONS`, any case; hidden entries skipped).

    No labels (every label -1, no classes): for MAE pretraining and contrastive tuning on a user's own recordings.
    Clip ids are the paths relative to root; every clip's split is 'all'.
    """
    root = os.path.abspath(require_dir(root, "a folder of audio files (searched recursively)"))
    paths = list_audio_files(root)
    if not paths:
        raise DatasetLayoutError(f"{root}: no audio files below it (extensions {', '.join(AUDIO_EXTENSIONS)}, "
                                 f"any case); point data.root at a folder that holds some")
    prefix = common_prefix(root)
    return build_manifest(name, paths, [()] * len(paths), (), clip_ids=[p[len(prefix):] for p in paths],
                          prefix=prefix)


def read_dataset(name: str, root: str, **options: Any) -> Manifest:
    """Reads dataset `name` from the unpacked folder `root`; `options` go to that layout's reader.

    name: audioset | esc50 | speechcommands | nsynth | voxceleb1 | fsdkaggle2018 | manifest | folder | unlabelled
    | tfds.
    """
    if name == "audioset":
        from uamix_jax.data.audioset import read_audioset
        return read_audioset(root, **options)
    if name == "tfds":
        from uamix_jax.data.tfds_source import read_tfds
        return read_tfds(root or None, **options)  # an empty root means TFDS's default data_dir
    readers = {"esc50": read_esc50, "speechcommands": read_speechcommands, "nsynth": read_nsynth,
               "voxceleb1": read_voxceleb1, "fsdkaggle2018": read_fsdkaggle2018, "manifest": read_manifest_csv,
               "folder": read_folder, "unlabelled": read_unlabelled}
    if name not in readers:
        raise ValueError(f"unknown dataset name {name!r} (config.data.name); choose one of "
                         f"{sorted([*readers, 'audioset', 'tfds'])}")
    if not os.path.exists(root):
        raise DatasetLayoutError(f"dataset root {root!r} does not exist (config.data.root for {name!r})")
    return readers[name](root, **options)


def class_halves(class_names: Sequence[str]) -> tuple[list[str], list[str]]:
    """A deterministic split of a dataset's classes into a dev half and a test half (the dev half gets the odd one).

    Classes are ordered by the SHA-256 of their names and dealt alternately, so the split depends only on the names
    (not on the order a reader lists them), mixes the classes rather than cutting the alphabet, and is the same on
    every machine. Choices (budgets, learning rates) are made on the dev half, results reported on the test half.
    """
    order = sorted(class_names, key=lambda c: hashlib.sha256(c.encode()).hexdigest())
    return sorted(order[0::2]), sorted(order[1::2])


def select_classes(manifest: Manifest, classes: str) -> Manifest:
    """The clips of some classes: '' all, 'dev' / 'test' one half of `class_halves`, or 'a,b,c' by name.

    Labels and class names stay as they are (ids are not renumbered); unknown names are an error naming them.
    """
    classes = classes.strip()
    if not classes:
        return manifest
    if classes in ("dev", "test"):
        dev, test = class_halves(manifest.class_names)
        wanted = dev if classes == "dev" else test
    else:
        wanted = [c.strip() for c in classes.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in manifest.class_names]
        if unknown:
            raise ValueError(f"config.data.classes: {unknown} are not classes of {manifest.name} (it has "
                             f"{list(manifest.class_names)[:12]}{' ...' if manifest.num_classes > 12 else ''})")
    ids = np.array([manifest.class_names.index(c) for c in wanted], np.int64)
    return manifest.select(np.isin(manifest.labels, ids))


def dataset_label(data: Mapping[str, Any]) -> str:
    """The dataset's name in output file names, figure titles and metric keys.

    data.label when set; else, for `folder` and `manifest` data, the folder's base name (the manifest file's, less
    its extension), so that two such datasets evaluated into one OUT do not overwrite each other; the TFDS dataset's
    name for `tfds`; else data.name (esc50, ...). Characters other than [A-Za-z0-9_.-] become '_'.
    """
    name = data.get("label", "")
    if not name and data["name"] in ("folder", "manifest") and data.get("root"):
        root = os.path.normpath(data["root"])
        name = os.path.splitext(os.path.basename(root))[0] if os.path.isfile(root) else os.path.basename(root)
    if not name:
        name = data.get("tfds_name", "") if data["name"] == "tfds" else ""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name or data["name"])


def read_configured_dataset(data: Mapping[str, Any], *, labelled: bool = False, workdir: str | None = None,
                            seed: int = 0) -> Manifest:
    """The manifest a config's `data` block names: the one reader of every command and task.

    name, root, split, tfds_name as `read_dataset` takes them. With `split`, only that split (an unknown split is an
    error naming the ones there are); with `classes`, only those classes (`select_classes`); with `labelled`, only
    clips with a class label (an error when none has one). `synthetic` with an empty root: the demo's synthetic
    folder set (`uamix_jax.data.synthetic`, clips of `clip_seconds`, from `seed`) is made once in <workdir>/data and
    read.
    """
    name, root, split = data["name"], data.get("root", ""), data.get("split", "")
    if not root and name != "tfds" and data.get("synthetic", False):
        if workdir is None:
            raise ValueError("config.data.synthetic needs a workdir to hold the synthesised clips")
        from uamix_jax.data.synthetic import ensure_demo_dataset

        root = ensure_demo_dataset(os.path.join(workdir, "data"), seconds=data["clip_seconds"], seed=seed)
    if name != "tfds" and not root:
        raise ValueError(f"config.data.root is empty: point it at the unpacked {name} dataset")
    options = {"tfds_name": data.get("tfds_name", "")} if name == "tfds" else {}
    manifest = read_dataset(name, root, **options)
    if split:
        if split not in set(manifest.splits):
            raise ValueError(f"config.data.split={split!r} is not a split of {name} at {root}; it has "
                             f"{sorted(set(manifest.splits))} (use '' for every clip)")
        manifest = manifest.filter(split=split)
    manifest = select_classes(manifest, data.get("classes", ""))
    if labelled:
        manifest = manifest.select(manifest.labels >= 0)
        if len(manifest) == 0:
            raise ValueError(f"{name} at {root!r} (split {split or 'all'!r}) has no labelled clips; this command "
                             f"needs class labels")
    return manifest


__all__ = ["read_dataset", "read_configured_dataset", "dataset_label", "class_halves", "select_classes", "read_esc50", "read_speechcommands", "read_nsynth", "read_voxceleb1", "read_fsdkaggle2018",
           "read_folder", "read_manifest_csv", "read_unlabelled"]
