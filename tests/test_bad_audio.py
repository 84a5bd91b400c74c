"""Bad audio: every kind is skipped and logged once (or raises in 'error' mode); mostly-missing manifests fail early."""
import os
import pickle

import numpy as np
import pytest
import soundfile as sf

from uamix_jax.audio.io import AudioLoadError
from uamix_jax.data.bad_audio import BadAudioLog, check_manifest, read_bad_audio_log
from uamix_jax.data.manifest import build_manifest
from uamix_jax.data.pipeline import bad_audio_log_path, make_pipeline

CLIP = 2000


def good_clip(path, seed):
    sf.write(path, np.random.default_rng(seed).uniform(-0.5, 0.5, 3000).astype(np.float32), 16000, subtype="FLOAT")


def make_bad_files(folder):
    """One file per kind of bad audio the issue lists; returns {kind: path}."""
    os.makedirs(folder, exist_ok=True)
    good_clip(os.path.join(folder, "template.wav"), 0)
    wav = open(os.path.join(folder, "template.wav"), "rb").read()
    raw = {"empty": b"", "undecodable": os.urandom(4000), "truncated_header": wav[:30],
           "truncated_data": wav[:-2000]}  # an interrupted download: the header promises more samples
    paths = {}
    for kind, data in raw.items():
        paths[kind] = os.path.join(folder, f"{kind}.wav")
        with open(paths[kind], "wb") as f:
            f.write(data)
    for kind, value in (("nan", np.nan), ("inf", np.inf)):
        samples = np.full(3000, 0.1, np.float32)
        samples[1234] = value
        paths[kind] = os.path.join(folder, f"{kind}.wav")
        sf.write(paths[kind], samples, 16000, subtype="FLOAT")
    paths["header_only"] = os.path.join(folder, "header_only.wav")  # a valid header and no samples
    sf.write(paths["header_only"], np.zeros(0, np.float32), 16000, subtype="PCM_16")
    paths["too_short"] = os.path.join(folder, "too_short.wav")  # decodes, but holds less than one 25 ms frame
    sf.write(paths["too_short"], np.full(100, 0.1, np.float32), 16000, subtype="FLOAT")
    paths["missing"] = os.path.join(folder, "missing.wav")
    os.remove(os.path.join(folder, "template.wav"))
    return paths


def manifest_of(paths, name="mixed"):
    return build_manifest(name, paths, [(i % 2,) for i in range(len(paths))], ["a", "b"])


def test_every_kind_of_bad_file_is_replaced_and_logged_once(tmp_path):
    bad = make_bad_files(str(tmp_path / "bad"))
    good = []
    for i in range(12):
        good.append(str(tmp_path / f"good{i}.wav"))
        good_clip(good[-1], i + 1)
    paths = good[:6] + list(bad.values()) + good[6:]
    m = manifest_of(paths)
    log_path = tmp_path / "work" / "bad_audio.txt"
    log = BadAudioLog(log_path)
    it = make_pipeline(m, batch_size=4, clip_samples=CLIP, seed=0, train=True, num_epochs=3, bad_audio_log=log)
    batches = list(it)
    assert len(batches) == 3 * (len(paths) // 4)
    bad_rows = {paths.index(p) for p in bad.values()}
    delivered = np.concatenate([b["index"] for b in batches])
    assert not bad_rows & set(delivered.tolist())  # only good clips come out
    assert all((b["length"] == CLIP).all() and np.isfinite(b["waveform"]).all() for b in batches)
    for b in batches:  # the replacement's own samples and label travel with its index
        for row, i in enumerate(b["index"]):
            assert b["label"][row] == m.labels[i]
    entries = read_bad_audio_log(log_path)
    assert set(entries) == set(bad.values()) and log.count == len(bad)
    lines = log_path.read_text().splitlines()
    assert len(lines) == len(bad)  # three epochs, each file once
    expected_reason = {"empty": "empty", "undecodable": "decod", "truncated_header": "decod",
                       "truncated_data": "truncated", "header_only": "zero",
                       "nan": "NaN", "inf": "NaN", "too_short": "25 ms", "missing": "not found"}
    for kind, path in bad.items():
        assert expected_reason[kind].lower() in entries[path].lower(), (kind, entries[path])
    # a restarted run appends nothing for files already listed
    list(make_pipeline(m, batch_size=4, clip_samples=CLIP, seed=0, train=False, num_epochs=1, bad_audio_log=log_path))
    assert log_path.read_text().splitlines() == lines


@pytest.mark.parametrize("kind", ["empty", "undecodable", "truncated_header", "truncated_data", "header_only", "nan",
                                  "inf", "too_short", "missing"])
def test_error_mode_raises_with_the_file_name_and_the_reason(tmp_path, kind):
    path = make_bad_files(str(tmp_path))[kind]
    good = str(tmp_path / "good.wav")
    good_clip(good, 1)
    it = make_pipeline(manifest_of([good, path]), batch_size=2, clip_samples=CLIP, seed=0, train=False,
                       on_bad_audio="error")
    with pytest.raises(AudioLoadError) as info:
        next(it)
    assert info.value.path == path and os.path.basename(path) in str(info.value) and info.value.reason
    # grain workers send the exception to the main process pickled: it must arrive whole
    again = pickle.loads(pickle.dumps(info.value))
    assert isinstance(again, AudioLoadError) and (again.path, again.reason) == (path, info.value.reason)


def test_a_run_with_ten_percent_bad_files_finishes_and_lists_exactly_those(tmp_path):
    rng = np.random.default_rng(3)
    paths = []
    for i in range(40):
        paths.append(str(tmp_path / f"clip{i:02d}.wav"))
        good_clip(paths[-1], 100 + i)
    bad_rows = sorted(rng.choice(40, 4, replace=False).tolist())
    for k, row in enumerate(bad_rows):  # four kinds of damage
        if k == 0:
            os.remove(paths[row])
        elif k == 1:
            open(paths[row], "wb").close()
        elif k == 2:
            with open(paths[row], "r+b") as f:
                f.truncate(20)
        else:
            with open(paths[row], "wb") as f:
                f.write(b"RIFF....not audio at all" * 10)
    log_path = tmp_path / "bad_audio.txt"
    batches = list(make_pipeline(manifest_of(paths), batch_size=8, clip_samples=CLIP, seed=1, train=True,
                                 num_epochs=2, bad_audio_log=str(log_path)))
    assert len(batches) == 10
    assert sorted(read_bad_audio_log(log_path)) == sorted(paths[r] for r in bad_rows)


def test_replacements_are_deterministic(tmp_path):
    paths = []
    for i in range(10):
        paths.append(str(tmp_path / f"c{i}.wav"))
        good_clip(paths[-1], i)
    for r in (2, 3, 7):
        os.remove(paths[r])
    m = manifest_of(paths)
    runs = [np.concatenate([b["index"] for b in make_pipeline(m, batch_size=5, clip_samples=CLIP, seed=4, train=True,
                                                              num_epochs=2)]) for _ in range(2)]
    np.testing.assert_array_equal(*runs)
    assert not {2, 3, 7} & set(runs[0].tolist())


def test_a_broken_dataset_stops_with_a_clear_error(tmp_path):
    m = manifest_of([str(tmp_path / f"none{i}.wav") for i in range(4)])
    with pytest.raises(RuntimeError, match="16 clips in a row failed to load.*file not found"):
        next(make_pipeline(m, batch_size=2, clip_samples=CLIP, seed=0, train=True))


def test_check_manifest_fails_when_most_files_are_missing(tmp_path):
    paths = [str(tmp_path / f"c{i}.wav") for i in range(10)]
    for p in paths[:4]:
        good_clip(p, 0)
    with pytest.raises(FileNotFoundError, match=r"6 of 10 files are missing.*c4\.wav"):
        check_manifest(manifest_of(paths))
    good_clip(paths[4], 0)
    assert check_manifest(manifest_of(paths)) == 5  # exactly half: still runs, the 5 get skipped later
    sampled = [str(tmp_path / f"s{i}.wav") for i in range(300)]
    with pytest.raises(FileNotFoundError, match="of 100 files .*a random sample of the 300 clips"):
        check_manifest(manifest_of(sampled), max_checks=100)


def test_each_process_writes_its_own_log():
    assert bad_audio_log_path("/w/bad_audio.txt", 0, 1) == "/w/bad_audio.txt"
    assert bad_audio_log_path("/w/bad_audio.txt", 1, 4) == "/w/bad_audio.process1.txt"


def _many_bad(tmp_path, n=40, bad_every=3):
    """n good-clip paths, every `bad_every`-th one deleted: a third of the dataset fails to load."""
    paths = []
    for i in range(n):
        paths.append(str(tmp_path / f"c{i:02d}.wav"))
        if i % bad_every:
            good_clip(paths[-1], i)
    return paths, {i for i in range(n) if i % bad_every == 0}


def test_a_replacement_is_never_a_clip_already_in_the_global_batch(tmp_path):
    paths, bad = _many_bad(tmp_path)
    m = manifest_of(paths)
    kw = dict(clip_samples=CLIP, seed=2, train=True, num_epochs=4)
    single = list(make_pipeline(m, batch_size=8, **kw))
    assert len(single) == 4 * (40 // 8)
    for b in single:
        ids = b["index"].tolist()
        assert len(set(ids)) == len(ids), ids  # one sample id once per batch: no false negative, no twin queue row
        assert not bad & set(ids)
        np.testing.assert_array_equal(b["label"], m.labels[b["index"]])
    # each epoch: every good clip in its own slot, and the 14 bad slots filled with good clips again
    for epoch in range(4):
        ids = np.concatenate([b["index"] for b in single[5 * epoch:5 * epoch + 5]])
        assert len(ids) == 40 and set(ids.tolist()) == set(range(40)) - bad
    # two processes pick the same replacements (the choice depends on the global row, not on the process split),
    # so their batches still concatenate into the single-process global batch, duplicates-free across processes
    halves = [list(make_pipeline(m, batch_size=4, process_index=p, process_count=2, **kw)) for p in (0, 1)]
    for a, b, s in zip(*halves, single):
        for k in ("index", "label", "length", "waveform"):
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), s[k], err_msg=k)
