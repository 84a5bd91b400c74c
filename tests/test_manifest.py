"""Manifest columns, selection and filtering, the generic CSV manifest, the folder layout, and the start-up summary."""
import os

import numpy as np
import pytest
import soundfile as sf

from uamix_jax.data.manifest import (DatasetLayoutError, MultiLabels, StringColumn, build_manifest, read_folder,
                                     read_manifest_csv)
from uamix_jax.data.summary import dataset_summary


def write_wav(path, seconds=0.1, sample_rate=16000, channels=1):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    n = int(round(seconds * sample_rate))
    data = (0.1 * np.sin(np.arange(n) * 0.05)).astype(np.float32)
    sf.write(path, data if channels == 1 else np.stack([data] * channels, 1), sample_rate, subtype="PCM_16")
    return path


def test_string_column_round_trips_and_indexes():
    strings = ["/data/a/x.wav", "/data/a/ü.wav", "/data/b/y.flac"]
    col = StringColumn.from_strings(strings, prefix="/data/")
    assert col.values.dtype.kind == "S" and col.prefix == "/data/"
    assert list(col) == strings and col.tolist() == strings and col[1] == "/data/a/ü.wav"
    sub = col[np.array([2, 0])]
    assert isinstance(sub, StringColumn) and sub.tolist() == [strings[2], strings[0]]
    assert col[np.array([True, False, True])].tolist() == [strings[0], strings[2]]
    np.testing.assert_array_equal(col.isin(["/data/b/y.flac", "/elsewhere/q.wav"]), [False, False, True])
    with pytest.raises(ValueError, match="does not start with"):
        StringColumn.from_strings(["/other/z.wav"], prefix="/data/")


def test_multi_labels_select_and_dense_match_a_python_oracle():
    rng = np.random.default_rng(0)
    sets = [sorted(set(rng.integers(0, 7, rng.integers(0, 4)).tolist())) for _ in range(50)]
    ml = MultiLabels.from_lists(sets, 7)
    oracle = np.zeros((50, 7), bool)
    for i, s in enumerate(sets):
        oracle[i, s] = True
    np.testing.assert_array_equal(ml.dense(), oracle)
    rows = rng.permutation(50)[:17]
    sub = ml.select(rows)
    np.testing.assert_array_equal(sub.dense(), oracle[rows])
    assert [sub[i].tolist() for i in range(17)] == [sets[r] for r in rows]
    single = MultiLabels.from_labels(np.array([2, -1, 0], np.int32), 3)
    np.testing.assert_array_equal(single.dense(), [[0, 0, 1], [0, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        MultiLabels.from_lists([[7]], 7)


def _toy_manifest():
    paths = [f"/d/c{i % 3}/{i}.wav" for i in range(9)]
    return build_manifest("toy", paths, [(i % 3,) for i in range(9)], ["a", "b", "c"],
                          splits=["train"] * 6 + ["test"] * 3, folds=[1, 2, 3] * 3, prefix="/d/")


def test_manifest_select_filter_and_columns():
    m = _toy_manifest()
    assert len(m) == 9 and m.num_classes == 3 and m.labels.dtype == np.int32
    sub = m.select(np.array([4, 1]))
    assert sub.paths.tolist() == ["/d/c1/4.wav", "/d/c1/1.wav"] and sub.labels.tolist() == [1, 1]
    assert sub.clip_ids.tolist() == ["/d/c1/4.wav", "/d/c1/1.wav"] and sub.folds.tolist() == [2, 2]
    test = m.filter(split="test")
    assert test.paths.tolist() == ["/d/c0/6.wav", "/d/c1/7.wav", "/d/c2/8.wav"]
    assert m.filter(split=["train", "test"], folds=[1, 3]).folds.tolist() == [1, 3, 1, 3, 1, 3]
    assert len(m.filter(folds=2)) == 3
    with pytest.raises(ValueError, match="no split"):
        m.filter(split="valid")
    with pytest.raises(ValueError, match="mask has shape"):
        m.select(np.ones(4, bool))


def test_duplicate_clip_ids_are_an_error():
    with pytest.raises(DatasetLayoutError, match="unique"):
        build_manifest("dup", ["/a.wav", "/b.wav"], [(0,), (0,)], ["x"], clip_ids=["same", "same"])


def test_csv_manifest_with_names_multi_labels_splits_and_folds(tmp_path):
    write_wav(str(tmp_path / "clips" / "a.wav"))
    (tmp_path / "manifest.csv").write_text(
        "path,label,split,fold,comment\n"
        "clips/a.wav,dog,train,1,x\n"
        f"{tmp_path}/abs.wav,cat;dog,test,2,y\n"
        "clips/c.wav,,train,,z\n")
    m = read_manifest_csv(str(tmp_path))
    assert m.paths.tolist() == [str(tmp_path / "clips" / "a.wav"), str(tmp_path / "abs.wav"),
                                str(tmp_path / "clips" / "c.wav")]
    assert m.class_names == ("cat", "dog")
    assert m.labels.tolist() == [1, 0, -1]  # primary = first listed; empty = unknown
    np.testing.assert_array_equal(m.multi_labels.dense(), [[0, 1], [1, 1], [0, 0]])
    assert m.splits.tolist() == ["train", "test", "train"] and m.folds.tolist() == [1, 2, -1]
    assert m.clip_ids.tolist() == ["clips/a.wav", f"{tmp_path}/abs.wav", "clips/c.wav"]


def test_csv_manifest_integer_labels_and_path_only(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\nx.wav,2\ny.wav,0\n")
    m = read_manifest_csv(str(tmp_path / "m.csv"))
    assert m.labels.tolist() == [2, 0] and m.class_names == ("0", "1", "2") and m.splits.tolist() == ["all", "all"]
    (tmp_path / "u.csv").write_text("path\nx.wav\n")
    unlabelled = read_manifest_csv(str(tmp_path / "u.csv"))
    assert unlabelled.labels.tolist() == [-1] and unlabelled.num_classes == 0


def test_csv_manifest_errors_name_the_file_and_the_expected_header(tmp_path):
    (tmp_path / "manifest.csv").write_text("file,label\nx.wav,a\n")
    with pytest.raises(DatasetLayoutError, match=r"manifest\.csv.*lacks column\(s\) \['path'\].*path,label"):
        read_manifest_csv(str(tmp_path))
    with pytest.raises(DatasetLayoutError, match=r"missing file .*nothere.*manifest\.csv"):
        read_manifest_csv(str(tmp_path / "nothere"))
    (tmp_path / "bad_fold.csv").write_text("path,fold\nx.wav,one\n")
    with pytest.raises(DatasetLayoutError, match="line 2: fold 'one'"):
        read_manifest_csv(str(tmp_path / "bad_fold.csv"))


def test_folder_layout_reads_classes_recursively_and_skips_underscore_folders(tmp_path):
    for rel in ["dog/1.wav", "dog/sub/2.flac", "cat/3.wav", "_noise/n.wav", ".hidden/h.wav"]:
        write_wav(str(tmp_path / rel))
    (tmp_path / "cat" / "notes.txt").write_text("not audio")
    m = read_folder(str(tmp_path))
    assert m.class_names == ("cat", "dog")
    assert m.clip_ids.tolist() == ["cat/3.wav", "dog/1.wav", "dog/sub/2.flac"]
    assert m.labels.tolist() == [0, 1, 1] and m.paths[0] == str(tmp_path / "cat" / "3.wav")
    with pytest.raises(DatasetLayoutError, match="no class sub-folders"):
        read_folder(str(tmp_path / "cat"))


def test_dataset_summary_counts_hours_from_headers(tmp_path):
    paths = [write_wav(str(tmp_path / "c" / f"{i}.wav"), seconds=s, sample_rate=sr)
             for i, (s, sr) in enumerate([(0.5, 16000), (1.5, 44100), (1.0, 8000)])]
    m = build_manifest("three", paths, [(0,), (0,), ()], ["c"])
    text = dataset_summary(m, bad_count=2)
    assert "3 clips, 1 classes" in text and "bad files found so far: 2" in text and "unlabelled clips: 1" in text
    assert "= 3 s (from every file header; clips 0.50-1.50 s)" in text
    (tmp_path / "c" / "1.wav").write_bytes(b"garbage")  # an unreadable header is counted, not fatal
    est = dataset_summary(m, max_files=2, seed=0)
    assert "estimate from" in est and "of 3 clips sampled" in est
