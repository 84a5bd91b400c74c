"""Each published layout as a miniature copy (real file names and CSV headers, synthesised audio) read back."""
import json
import os

import numpy as np
import pytest
import soundfile as sf

from uamix_jax.data.layouts import read_dataset
from uamix_jax.data.manifest import DatasetLayoutError


def write_wav(path, seconds=0.05, sample_rate=16000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, (0.1 * np.sin(np.arange(int(seconds * sample_rate)) * 0.1)).astype(np.float32), sample_rate)
    return path


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def by_id(manifest):
    return {manifest.clip_ids[i]: i for i in range(len(manifest))}


# ------------------------------------------------------------------------------------------------------- AudioSet
AS_LABELS = ('index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n'
             '2,/m/04rlf,"Music"\n3,/m/0jbk,"Animal"\n')
AS_HEADER = ("# Segments csv created Sun Mar  5 10:54:31 2017\n"
             "# num_ytids={n}, num_segs={n}, num_unique_labels=4, num_positive_labels=6\n"
             "# YTID, start_seconds, end_seconds, positive_labels\n")


def make_audioset(root):
    write_text(f"{root}/class_labels_indices.csv", AS_LABELS)
    write_text(f"{root}/balanced_train_segments.csv", AS_HEADER.format(n=4) +
               '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/05zppz"\n'
               '--ZhevVpy1s, 50.000, 60.000, "/m/04rlf"\n'
               'Ya1b2c3d4e5, 0.000, 10.000, "/m/0jbk,/m/04rlf,/m/09x0r"\n'
               'gone_gone_1, 0.000, 10.000, "/m/0jbk"\n')  # listed but never downloaded
    write_text(f"{root}/eval_segments.csv", AS_HEADER.format(n=2) +
               '-0RWZT-miFs, 420.000, 430.000, "/m/0jbk"\n'
               '-1nilez17Dg, 30.000, 40.000, "/m/04rlf,/m/0jbk"\n')
    # the namings downloaders use: <id>, Y<id>, Y<id>_<start>_<end>, <id>_<start>; wav and flac
    write_wav(f"{root}/audio/balanced_train_segments/Y--PJHxphWEs.wav")
    write_wav(f"{root}/audio/balanced_train_segments/--ZhevVpy1s.flac")
    write_wav(f"{root}/audio/balanced_train_segments/YYa1b2c3d4e5_0.000_10.000.wav")
    write_wav(f"{root}/audio/eval_segments/-0RWZT-miFs_420000.wav")
    write_wav(f"{root}/audio/eval_segments/-1nilez17Dg.wav")
    write_wav(f"{root}/audio/eval_segments/notlisted99.wav")


def test_audioset_reads_multi_labels_splits_and_the_common_clip_namings(tmp_path):
    make_audioset(tmp_path)
    m = read_dataset("audioset", str(tmp_path))
    assert m.num_classes == 4 and m.class_names[1] == "Male speech, man speaking"
    ids = by_id(m)
    assert set(ids) == {"--PJHxphWEs", "--ZhevVpy1s", "Ya1b2c3d4e5", "-0RWZT-miFs", "-1nilez17Dg"}  # 'gone' dropped
    expect = {"--PJHxphWEs": ("balanced_train", [0, 1], 0, "balanced_train_segments/Y--PJHxphWEs.wav"),
              "--ZhevVpy1s": ("balanced_train", [2], 2, "balanced_train_segments/--ZhevVpy1s.flac"),
              "Ya1b2c3d4e5": ("balanced_train", [0, 2, 3], 3, "balanced_train_segments/YYa1b2c3d4e5_0.000_10.000.wav"),
              "-0RWZT-miFs": ("eval", [3], 3, "eval_segments/-0RWZT-miFs_420000.wav"),
              "-1nilez17Dg": ("eval", [2, 3], 2, "eval_segments/-1nilez17Dg.wav")}
    for ytid, (split, labels, primary, rel) in expect.items():
        i = ids[ytid]
        assert m.splits[i] == split and m.multi_labels[i].tolist() == labels and m.labels[i] == primary
        assert m.paths[i] == str(tmp_path / "audio" / rel)
    assert m.folds.tolist() == [-1] * 5
    balanced = read_dataset("audioset", str(tmp_path), subsets=["balanced_train"])
    assert set(balanced.splits.tolist()) == {"balanced_train"} and len(balanced) == 3


def test_audioset_errors(tmp_path):
    make_audioset(tmp_path)
    with pytest.raises(DatasetLayoutError, match="unbalanced_train_segments.csv"):
        read_dataset("audioset", str(tmp_path), subsets=["unbalanced_train"])
    write_text(f"{tmp_path}/eval_segments.csv", "YTID,start,end,labels\n-0RWZT-miFs, 1, 2, \"/m/0jbk\"\n")
    with pytest.raises(DatasetLayoutError, match=r"eval_segments\.csv: no header line '# YTID, start_seconds"):
        read_dataset("audioset", str(tmp_path))
    write_text(f"{tmp_path}/eval_segments.csv", AS_HEADER.format(n=1) + '-0RWZT-miFs, 1.0, 2.0, "/m/unknown"\n')
    with pytest.raises(DatasetLayoutError, match=r"labels \['/m/unknown'\]"):
        read_dataset("audioset", str(tmp_path))
    os.remove(f"{tmp_path}/class_labels_indices.csv")
    with pytest.raises(DatasetLayoutError, match="class_labels_indices.csv"):
        read_dataset("audioset", str(tmp_path))


# ------------------------------------------------------------------------------------------------------- ESC-50
ESC_ROWS = [("1-100032-A-0.wav", 1, 0, "dog", "True", 100032, "A"), ("1-100038-A-14.wav", 1, 2, "chirping_birds",
            "False", 100038, "A"), ("2-10001-A-0.wav", 2, 0, "dog", "True", 10001, "A"),
            ("5-9032-A-1.wav", 5, 1, "rooster", "True", 9032, "A"), ("3-1000-B-14.wav", 3, 2, "chirping_birds",
            "False", 1000, "B")]


def make_esc50(root):
    write_text(f"{root}/meta/esc50.csv", "filename,fold,target,category,esc10,src_file,take\n" +
               "".join(",".join(map(str, r)) + "\n" for r in ESC_ROWS))
    for r in ESC_ROWS:
        write_wav(f"{root}/audio/{r[0]}")


def test_esc50_labels_folds_and_esc10(tmp_path):
    make_esc50(tmp_path)
    m = read_dataset("esc50", str(tmp_path))
    assert m.class_names == ("dog", "rooster", "chirping_birds")
    assert m.clip_ids.tolist() == [r[0] for r in ESC_ROWS] and m.labels.tolist() == [r[2] for r in ESC_ROWS]
    assert m.folds.tolist() == [1, 1, 2, 5, 3] and set(m.splits.tolist()) == {"all"}
    assert m.paths[3] == str(tmp_path / "audio" / "5-9032-A-1.wav")
    assert m.filter(folds=[1]).clip_ids.tolist() == ["1-100032-A-0.wav", "1-100038-A-14.wav"]
    esc10 = read_dataset("esc50", str(tmp_path), esc10=True)
    assert esc10.class_names == ("dog", "rooster") and esc10.labels.tolist() == [0, 0, 1]


def test_esc50_missing_or_wrong_meta(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"missing file .*meta/esc50\.csv"):
        read_dataset("esc50", str(tmp_path))
    write_text(f"{tmp_path}/meta/esc50.csv", "filename,fold,label\n1-1-A-0.wav,1,0\n")
    with pytest.raises(DatasetLayoutError, match=r"lacks column\(s\) \['target', 'category', 'esc10'\].*"
                                                 r"filename,fold,target,category,esc10,src_file,take"):
        read_dataset("esc50", str(tmp_path))


# ---------------------------------------------------------------------------------------------- SpeechCommands
def test_speechcommands_splits_from_the_lists_and_background_noise_excluded(tmp_path):
    files = ["yes/0a7c2a8d_nohash_0.wav", "yes/0a9f9af7_nohash_1.wav", "no/012c8314_nohash_0.wav",
             "no/0132a06d_nohash_2.wav", "backward/0165e0e8_nohash_0.wav", "_background_noise_/white_noise.wav"]
    for f in files:
        write_wav(f"{tmp_path}/{f}")
    write_text(f"{tmp_path}/validation_list.txt", "yes/0a9f9af7_nohash_1.wav\n")
    write_text(f"{tmp_path}/testing_list.txt", "no/0132a06d_nohash_2.wav\nbackward/0165e0e8_nohash_0.wav\n")
    write_text(f"{tmp_path}/LICENSE", "CC-BY-4.0")
    m = read_dataset("speechcommands", str(tmp_path))
    assert m.class_names == ("backward", "no", "yes")
    got = {m.clip_ids[i]: (m.labels[i], m.splits[i]) for i in range(len(m))}
    assert got == {"yes/0a7c2a8d_nohash_0.wav": (2, "train"), "yes/0a9f9af7_nohash_1.wav": (2, "valid"),
                   "no/012c8314_nohash_0.wav": (1, "train"), "no/0132a06d_nohash_2.wav": (1, "test"),
                   "backward/0165e0e8_nohash_0.wav": (0, "test")}
    os.remove(f"{tmp_path}/testing_list.txt")
    with pytest.raises(DatasetLayoutError, match="testing_list.txt"):
        read_dataset("speechcommands", str(tmp_path))


# ------------------------------------------------------------------------------------------------------- NSynth
def _note(note_str, instrument, family, family_str):
    inst_str = note_str.rsplit("-", 2)[0]
    return {"note": 1, "note_str": note_str, "instrument": instrument, "instrument_str": inst_str, "pitch": 60,
            "velocity": 100, "sample_rate": 16000, "qualities": [0] * 10, "qualities_str": [],
            "instrument_family": family, "instrument_family_str": family_str, "instrument_source": 0,
            "instrument_source_str": "acoustic"}


NSYNTH = {"train": [("bass_synthetic_033-022-050", 417, 0, "bass"), ("guitar_acoustic_001-082-050", 3, 3, "guitar")],
          "valid": [("keyboard_electronic_001-021-127", 150, 4, "keyboard")],
          "test": [("bass_synthetic_033-030-100", 417, 0, "bass"), ("brass_acoustic_006-034-127", 999, 1, "brass")]}


def make_nsynth(root):
    for split, notes in NSYNTH.items():
        write_text(f"{root}/nsynth-{split}/examples.json", json.dumps({n[0]: _note(*n) for n in notes}))
        for n in notes:
            write_wav(f"{root}/nsynth-{split}/audio/{n[0]}.wav")


def test_nsynth_instrument_labels_and_splits(tmp_path):
    make_nsynth(tmp_path)
    m = read_dataset("nsynth", str(tmp_path))
    # labels are the loaded instrument ids in increasing order: 3, 150, 417, 999
    assert m.class_names == ("guitar_acoustic_001", "keyboard_electronic_001", "bass_synthetic_033",
                             "brass_acoustic_006")
    got = {m.clip_ids[i]: (int(m.labels[i]), m.splits[i]) for i in range(len(m))}
    assert got == {"train/bass_synthetic_033-022-050": (2, "train"), "train/guitar_acoustic_001-082-050": (0, "train"),
                   "valid/keyboard_electronic_001-021-127": (1, "valid"),
                   "test/bass_synthetic_033-030-100": (2, "test"), "test/brass_acoustic_006-034-127": (3, "test")}
    i = by_id(m)["valid/keyboard_electronic_001-021-127"]
    assert m.paths[i] == str(tmp_path / "nsynth-valid" / "audio" / "keyboard_electronic_001-021-127.wav")
    family = read_dataset("nsynth", str(tmp_path), label="instrument_family")
    assert family.class_names == ("bass", "brass", "guitar", "keyboard")
    one = read_dataset("nsynth", str(tmp_path / "nsynth-test"))
    assert len(one) == 2 and set(one.splits.tolist()) == {"test"} and one.class_names == ("bass_synthetic_033",
                                                                                          "brass_acoustic_006")
    with pytest.raises(DatasetLayoutError, match="nsynth-train"):
        read_dataset("nsynth", str(tmp_path / "nsynth-test" / "audio"))


# ---------------------------------------------------------------------------------------------------- VoxCeleb1
VOX = [("1", "id10001/1zcIwhmdeo4/00001.wav"), ("3", "id10001/1zcIwhmdeo4/00002.wav"),
       ("2", "id10003/5ablueV_1tw/00001.wav"), ("1", "id10002/0_laIeN-Q44/00003.wav")]


@pytest.mark.parametrize("archives", [False, True])
def test_voxceleb1_speakers_and_iden_split(tmp_path, archives):
    write_text(f"{tmp_path}/iden_split.txt", "".join(f"{s} {p}\n" for s, p in VOX))
    for _, rel in VOX:  # either one wav/ folder, or the dev/test archives unpacked side by side
        folder = ("vox1_test_wav/wav" if rel.startswith("id10003") else "vox1_dev_wav/wav") if archives else "wav"
        write_wav(f"{tmp_path}/{folder}/{rel}")
    m = read_dataset("voxceleb1", str(tmp_path))
    assert m.class_names == ("id10001", "id10002", "id10003")
    assert m.clip_ids.tolist() == [p for _, p in VOX] and m.labels.tolist() == [0, 0, 2, 1]
    assert m.splits.tolist() == ["train", "test", "valid", "train"]
    assert all(os.path.isfile(p) for p in m.paths)


def test_voxceleb1_bad_split_line(tmp_path):
    write_text(f"{tmp_path}/iden_split.txt", "1 id10001/a/00001.wav\n4 id10001/a/00002.wav\n")
    os.makedirs(f"{tmp_path}/wav")
    with pytest.raises(DatasetLayoutError, match=r"iden_split\.txt, line 2"):
        read_dataset("voxceleb1", str(tmp_path))


# ------------------------------------------------------------------------------------------------ FSDKaggle2018
@pytest.mark.parametrize("short_names", [False, True])
def test_fsdkaggle2018_train_and_scored_test_clips(tmp_path, short_names):
    write_text(f"{tmp_path}/FSDKaggle2018.meta/train_post_competition.csv",
               "fname,label,manually_verified,freesound_id,license\n"
               "00044347.wav,Hi-hat,0,28739,Attribution\n001ca53d.wav,Saxophone,1,358827,Attribution\n"
               "002d256b.wav,Trumpet,0,10897,Creative Commons 0\n")
    write_text(f"{tmp_path}/FSDKaggle2018.meta/test_post_competition_scoring_clips.csv",
               "fname,label,usage,freesound_id,license\n00326aa9.wav,Oboe,Private,355125,Attribution\n"
               "0038a046.wav,Bass_drum,Public,90621,Creative Commons 0\n")
    train_dir, test_dir = ("audio_train", "audio_test") if short_names else ("FSDKaggle2018.audio_train",
                                                                             "FSDKaggle2018.audio_test")
    for f in ["00044347.wav", "001ca53d.wav", "002d256b.wav"]:
        write_wav(f"{tmp_path}/{train_dir}/{f}")
    for f in ["00326aa9.wav", "0038a046.wav"]:
        write_wav(f"{tmp_path}/{test_dir}/{f}")
    m = read_dataset("fsdkaggle2018", str(tmp_path))
    assert m.class_names == ("Bass_drum", "Hi-hat", "Oboe", "Saxophone", "Trumpet")
    assert m.clip_ids.tolist() == ["train/00044347.wav", "train/001ca53d.wav", "train/002d256b.wav",
                                   "test/00326aa9.wav", "test/0038a046.wav"]
    assert m.labels.tolist() == [1, 3, 4, 2, 0] and m.splits.tolist() == ["train"] * 3 + ["test"] * 2
    assert m.paths[3] == str(tmp_path / test_dir / "00326aa9.wav")
    verified = read_dataset("fsdkaggle2018", str(tmp_path), verified_only=True)
    assert verified.clip_ids.tolist() == ["train/001ca53d.wav", "test/00326aa9.wav", "test/0038a046.wav"]


def test_fsdkaggle2018_wrong_header(tmp_path):
    write_text(f"{tmp_path}/FSDKaggle2018.meta/train_post_competition.csv", "fname,labels\na.wav,Oboe\n")
    with pytest.raises(DatasetLayoutError, match=r"train_post_competition\.csv.*fname,label,manually_verified"):
        read_dataset("fsdkaggle2018", str(tmp_path))


def test_read_dataset_rejects_unknown_names_and_missing_roots(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset name 'esc-50'.*esc50"):
        read_dataset("esc-50", str(tmp_path))
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        read_dataset("folder", str(tmp_path / "nope"))


# ---------------------------------------------------------------------------------------------------- unlabelled
# (extension, soundfile arguments, sample rate); None: soundfile cannot write it, so only discovery is tested
UNLABELLED_FILES = [
    ("a/clip.wav", {}, 16000), ("a/b/clip.FLAC", {"format": "FLAC"}, 16000), ("a/b/c/clip.ogg", {}, 16000),
    ("x/clip.oga", {"format": "OGG"}, 16000), ("x/clip.Opus", {"format": "OGG", "subtype": "OPUS"}, 48000),
    ("x/y/clip.mp3", {"format": "MP3"}, 16000), ("clip.aiff", {}, 16000), ("z/clip.AIF", {"format": "AIFF"}, 22050),
    ("z/clip.m4a", None, 0),
]


def test_unlabelled_layout_finds_nested_files_of_every_listed_extension(tmp_path):
    from uamix_jax.audio.io import load_audio
    from uamix_jax.data.manifest import AUDIO_EXTENSIONS

    wave = (0.1 * np.sin(np.arange(8000) * 0.05)).astype(np.float32)
    for rel, kwargs, rate in UNLABELLED_FILES:
        path = tmp_path / "root" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if kwargs is None:
            path.write_bytes(b"\x00\x00\x00\x20ftypM4A ")  # an m4a header: discovery only
        else:
            sf.write(str(path), np.interp(np.arange(int(0.5 * rate)) * 16000 / rate, np.arange(8000), wave), rate,
                     **kwargs)
    write_text(f"{tmp_path}/root/notes.txt", "not audio")
    write_text(f"{tmp_path}/root/.hidden/clip.wav", "hidden folders are skipped")
    assert {os.path.splitext(r)[1].lower() for r, _, _ in UNLABELLED_FILES} == set(AUDIO_EXTENSIONS)

    m = read_dataset("unlabelled", str(tmp_path / "root"))
    assert sorted(m.clip_ids) == sorted(r for r, _, _ in UNLABELLED_FILES)
    assert m.name == "unlabelled" and m.num_classes == 0 and set(m.splits) == {"all"}
    np.testing.assert_array_equal(m.labels, -1)
    assert all(len(m.multi_labels[i]) == 0 for i in range(len(m)))
    for i, rel in enumerate(m.clip_ids):
        if not rel.endswith(".m4a"):  # every file soundfile wrote decodes to about 0.5 s at 16 kHz
            assert abs(load_audio(m.paths[i]).shape[0] - 8000) < 1000, rel


def test_unlabelled_layout_errors_name_the_folder(tmp_path):
    write_text(f"{tmp_path}/only/readme.txt", "no audio here")
    with pytest.raises(DatasetLayoutError, match=r"only: no audio files below it.*\.aiff"):
        read_dataset("unlabelled", str(tmp_path / "only"))
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        read_dataset("unlabelled", str(tmp_path / "nope"))
