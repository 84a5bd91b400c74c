"""Encoder specs: a HEAR module (tests/tiny_hear.py, PyTorch at 8 kHz) and precomputed embeddings (.npz) scored by
the few-shot command and the linear probe beside our encoder, on the same episodes and splits; clear errors."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from tests import tiny_hear
from tests.train_util import load_config
from uamix_jax.audio.io import load_audio
from uamix_jax.data.layouts import read_dataset
from uamix_jax.data.manifest import build_manifest
from uamix_jax.data.synthetic import make_demo_dataset
from uamix_jax.evaluation import sources
from uamix_jax.evaluation.fewshot import evaluate_fewshot
from uamix_jax.evaluation.sources import EncoderSpec, npz_embedder, parse_spec, parse_specs

HEAR = "tests.tiny_hear"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    # 16 kHz mono, 44.1 kHz and stereo clips (odd formats): all are resampled to the module's 8 kHz
    return str(make_demo_dataset(tmp_path_factory.mktemp("src") / "clips", num_classes=6, clips_per_class=8,
                                 seconds=1.0))


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny_model.txt"
    path.write_text("3")
    return str(path)


def _oracle(manifest, model_file, clip_seconds):
    """The module on each clip alone: load_audio at 8 kHz, the centre of at most clip_seconds, no padding."""
    model = tiny_hear.load_model(model_file)
    n = int(round(clip_seconds * tiny_hear.SAMPLE_RATE))
    rows = []
    for path in manifest.paths:
        wave = load_audio(path, tiny_hear.SAMPLE_RATE)
        start = max(0, (wave.shape[0] - n) // 2)
        rows.append(tiny_hear.get_scene_embeddings(torch.from_numpy(wave[start:start + n])[None], model)[0].numpy())
    return np.stack(rows)


def _at(path) -> str:
    """The start of an npz: source's error message, as a regex."""
    return re.escape(f"npz:{path}")


def _write_npz(path, ids, emb, **extra):
    np.savez(path, clip_ids=np.array(ids, dtype=str), embeddings=emb, **extra)
    return str(path)


def test_parse_specs_labels_and_syntax(tmp_path):
    run = tmp_path / "runs" / "lr=3e-4"
    run.mkdir(parents=True)
    assert parse_spec("PaSST=hear:hear21passt.base") == EncoderSpec("PaSST", "hear", "hear21passt.base")
    # the model file may hold '@' and '=' (a hub name with a revision); unnamed, the label is module@file
    assert parse_spec("hear:uamix_jax.hear@hf-hub:org/x@v1=2") == EncoderSpec(
        "uamix_jax.hear@x@v1=2", "hear", "uamix_jax.hear", "hf-hub:org/x@v1=2")
    assert parse_spec(f"npz:{run}/e=1.npz") == EncoderSpec("e=1", "npz", f"{run}/e=1.npz")
    assert parse_spec(f"M2D=npz:{run}/e.npz") == EncoderSpec("M2D", "npz", f"{run}/e.npz")
    assert parse_spec(str(run)) == EncoderSpec("lr=3e-4", "encoder", str(run))  # exists as a whole: a path
    assert parse_spec("", random_label="random init (test)") == EncoderSpec("random init (test)", "encoder", "")
    # the same encoder twice keeps its first line; labels must differ
    specs = parse_specs([f"a=npz:{run}/e.npz", f"npz:{run}/../lr=3e-4/e.npz", "b=hear:m", "hear:m", "r="])
    assert [(s.label, s.source) for s in specs] == [("a", "npz"), ("b", "hear"), ("r", "encoder")]
    with pytest.raises(ValueError, match=r"encoder labels must differ, got \['x', 'x'\]"):
        parse_specs(["x=hear:m", "x=npz:e.npz"])
    with pytest.raises(ValueError, match="hear: takes a Python module name.*got 'not-a-module'"):
        parse_spec("hear:not-a-module")
    with pytest.raises(ValueError, match="npz: takes a file"):
        parse_spec("name=npz:")


def test_hear_embeddings_resampled_unpadded_and_batched_by_length(tmp_path, model_file):
    """Clips of three lengths at 16 and 44.1 kHz: every embedding equals the module on that clip alone at 8 kHz
    (padding or a wrong rate would change the spectrum), each call holds one length, full batches first."""
    rng = np.random.default_rng(0)
    seconds = {"a": [1.0, 0.5, 1.0, 0.75, 1.0, 0.5, 1.0], "b": [0.75, 1.0, 1.0]}
    for cls, lengths in seconds.items():
        os.makedirs(tmp_path / "set" / cls)
        for k, s in enumerate(lengths):
            rate = 44100 if k == 1 else 16000
            t = np.arange(int(s * rate)) / rate
            wave = 0.3 * np.sin(2 * np.pi * (300 + 500 * k + 2000 * (cls == "b")) * t) + 0.01 * rng.standard_normal(
                t.size)
            sf.write(tmp_path / "set" / cls / f"{k}.wav", wave, rate)
    manifest = read_dataset("folder", str(tmp_path / "set"))
    module, model = tiny_hear, tiny_hear.load_model(model_file)
    tiny_hear.CALLS.clear()
    emb, valid = sources.hear_embeddings(manifest, module, model, clip_samples=8000, batch_size=2)
    # manifest order a/0..a/6, b/0..b/2 → lengths (×8000): 1, .5, 1, .75, 1, .5, 1 | .75, 1, 1
    assert tiny_hear.CALLS == [(2, 8000), (2, 4000), (2, 8000), (2, 6000), (2, 8000)]
    assert valid.all() and emb.dtype == np.float32 and emb.shape == (10, tiny_hear.DIM)
    np.testing.assert_allclose(emb, _oracle(manifest, model_file, 1.0), rtol=1e-5, atol=1e-5)
    # read at most 4000 samples: each clip's centre 0.5 s, all of one length
    tiny_hear.CALLS.clear()
    emb_half, _ = sources.hear_embeddings(manifest, module, model, clip_samples=4000, batch_size=16)
    assert tiny_hear.CALLS == [(10, 4000)]
    np.testing.assert_allclose(emb_half, _oracle(manifest, model_file, 0.5), rtol=1e-5, atol=1e-5)

    # many distinct lengths: at most `limit` clips wait; then the largest group goes as a partial batch
    batches = sources._LengthBatches(batch_size=4, limit=3)
    out = [b for i, n in enumerate([5, 6, 5, 7]) for b in batches.add(i, np.zeros(n))]
    assert [(list(i), w.shape) for i, w in out] == [([0, 2], (2, 5))]
    assert [(list(i), w.shape) for i, w in batches.flush()] == [([1], (1, 6)), ([3], (1, 7))]


def test_fewshot_scores_hear_modules_and_npz_on_our_episodes(tmp_path, data_root, model_file, capsys):
    """Our encoder (an AudioMAE-keyed weights file), the tiny HEAR module, our encoder through our own HEAR module
    and an .npz of our encoder's embeddings: one episode hash; the .npz row's per-episode accuracies equal the
    encoder's exactly; the tiny module's row is its oracle's; our HEAR module gives our encoder's embeddings."""
    from uamix_jax.evaluation.encoders import random_encoder
    from uamix_jax.evaluation.fewshot_main import run_fewshot
    from uamix_jax.interop.export import encoder_state_dict, save_export

    encoder, variables = random_encoder("test", target_length=128, seed=3)
    weights = save_export(tmp_path / "enc.safetensors", encoder_state_dict(variables["params"], encoder), {},
                          file_format="safetensors")
    config = load_config("fewshot", "test")
    config.data.root = data_root
    config.init_from = f"ours={weights}"
    config.compare = f"tiny=hear:{HEAR}@{model_file},viahear=hear:uamix_jax.hear@{weights}"
    out = tmp_path / "out"
    tiny_hear.CALLS.clear()
    rows = run_fewshot(config, str(out))
    assert [r["label"] for r in rows] == ["ours", "tiny", "viahear"]
    ours, hear, via = rows
    assert hear["encoder"] == f"hear:{HEAR}@{model_file}" and hear["sample_rate"] == 8000
    assert tiny_hear.CALLS == [(8, 8000)] * 6  # 48 clips of 1 s, batches of eval.batch_size = 8
    tiny_hear.CALLS.clear()
    with np.load(hear["embeddings"]) as f:
        hear_emb = f["embeddings"]
    manifest = read_dataset("folder", data_root)
    np.testing.assert_allclose(hear_emb, _oracle(manifest, model_file, config.data.clip_seconds), rtol=1e-5,
                               atol=1e-5)
    ref = evaluate_fewshot(hear_emb, manifest.labels, ways=5, shots=1, queries=5, episodes=100, seed=0)
    assert hear["accuracy_mean"] == pytest.approx(ref["accuracy_mean"], abs=1e-9)
    assert hear["accuracy_mean"] > 40.0  # the synthetic classes differ in spectrum: well above 20 % chance
    # 1 s clips are shorter than T = 128 frames: one window, padded as our input policy pads
    with np.load(ours["embeddings"]) as f, np.load(via["embeddings"]) as g:
        np.testing.assert_allclose(g["embeddings"], f["embeddings"], atol=1e-5)
        assert via["sample_rate"] == 16000

    # precomputed embeddings: our encoder's own, shuffled, with an extra id the dataset lacks
    with np.load(ours["embeddings"]) as f:
        our_emb = f["embeddings"]
    order = np.random.default_rng(0).permutation(len(manifest))
    ids = [manifest.clip_ids[int(i)] for i in order] + ["elsewhere/x.wav"]
    npz = _write_npz(tmp_path / "ours.npz", ids, np.concatenate([our_emb[order], np.ones((1, our_emb.shape[1]))]))
    config.compare = f"tiny=hear:{HEAR}@{model_file},pre=npz:{npz}"
    tiny_hear.CALLS.clear()
    again = run_fewshot(config, str(out))
    stdout = capsys.readouterr().out
    assert tiny_hear.CALLS == [] and stdout.count("embeddings reused from") == 2  # both caches hit
    assert [r["label"] for r in again] == ["ours", "tiny", "pre"]
    assert len({r["episodes_sha256"] for r in again}) == 1
    assert again[2]["episode_accuracy"] == again[0]["episode_accuracy"]
    assert again[2]["accuracy_mean"] == again[0]["accuracy_mean"] and again[2]["versus"]["ties"] == 100
    assert again[1]["episode_accuracy"] == hear["episode_accuracy"]
    saved = json.loads((out / "fewshot" / "pre" / "clips_5way1shot.json").read_text())
    assert saved["encoder"] == f"npz:{npz}" and saved["episodes_sha256"] == ours["episodes_sha256"]
    assert len(saved["embeddings_sha256"]) == 64


def test_linear_probe_scores_hear_module_and_npz_on_the_same_splits(tmp_path, data_root, model_file):
    """The probe of the HEAR module, then of an .npz holding the module's embeddings: the same splits and the same
    numbers, with the NAME= label in each record."""
    from uamix_jax.evaluation.linear_probe import run_linear_probe

    config = load_config("linear_probe")
    config.data.update(root=data_root, clip_seconds=1.0, worker_count=0)
    config.train.update(epochs=4, global_batch=8)
    config.optim.base_lr = 0.05
    config.progress = False
    config.init_from = f"tiny=hear:{HEAR}@{model_file}"
    hear = run_linear_probe(config, str(tmp_path / "w"))
    assert (hear["label"], hear["encoder"], hear["sample_rate"]) == ("tiny", f"hear:{HEAR}@{model_file}", 8000)
    assert hear["train_clips"] + hear["test_clips"] == 48 and 0.0 <= hear["value"] <= 1.0
    with np.load(hear["embeddings"]) as f:
        emb, valid = f["embeddings"], f["valid"]
    manifest = read_dataset("folder", data_root)
    np.testing.assert_allclose(emb, _oracle(manifest, model_file, 1.0), rtol=1e-5, atol=1e-5)

    npz = _write_npz(tmp_path / "tiny.npz", manifest.clip_ids.tolist(), emb, valid=valid)
    config.init_from = f"pre=npz:{npz}"
    pre = run_linear_probe(config, str(tmp_path / "w"))
    assert (pre["label"], pre["encoder"]) == ("pre", f"npz:{npz}")
    for key in ("value", "best", "best_epoch", "train_clips", "test_clips"):
        assert pre[key] == hear[key], key
    saved = json.loads((tmp_path / "w" / "linear_probe" / "clips.json").read_text())
    assert saved["label"] == "pre" and saved["value"] == pre["value"]


def test_bad_npz_and_unknown_modules_are_named(tmp_path):
    manifest = build_manifest("set", ["/d/a.wav", "/d/b.wav", "/d/c.wav"], [(0,), (1,), (0,)], ("x", "y"),
                              clip_ids=["a.wav", "b.wav", "c.wav"])
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    no_ids = tmp_path / "no_ids.npz"
    np.savez(no_ids, embeddings=emb, paths=np.array(["a.wav", "b.wav", "c.wav"]))
    with pytest.raises(ValueError, match=_at(no_ids) + r": has no 'clip_ids' array \(it holds \['embeddings', "
                                                       r"'paths'\]"):
        npz_embedder("n", str(no_ids))
    no_emb = str(tmp_path / "no_emb.npz")
    np.savez(no_emb, clip_ids=np.array(["a.wav"]), features=emb[:1])
    with pytest.raises(ValueError, match=_at(no_emb) + r": has no 'embeddings' array"):
        npz_embedder("n", no_emb)
    # the manifest's first id the file lacks is named; ids beyond the manifest are ignored
    partial = _write_npz(tmp_path / "partial.npz", ["c.wav", "a.wav", "z.wav"], emb)
    with pytest.raises(ValueError, match=_at(partial) + r" has no embedding for clip 'b.wav' of set \(1 of 3 clips "
                                                        r"missing\).*first id is 'c.wav'"):
        npz_embedder("n", partial).embed(manifest)
    full = _write_npz(tmp_path / "full.npz", ["c.wav", "b.wav", "a.wav"], emb, valid=np.array([True, False, True]))
    picked, valid = npz_embedder("n", full).embed(manifest)
    np.testing.assert_array_equal(picked, np.stack([emb[2], np.zeros(4), emb[0]]))
    np.testing.assert_array_equal(valid, [True, False, True])
    twice = _write_npz(tmp_path / "twice.npz", ["a.wav", "b.wav", "a.wav"], emb)
    with pytest.raises(ValueError, match="clip id 'a.wav' occurs twice in 'clip_ids' \\(rows 0 and 2\\)"):
        npz_embedder("n", twice)
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, clip_ids=np.array(["a.wav", 3], dtype=object), embeddings=emb[:2])
    with pytest.raises(ValueError, match=_at(pickled) + r": 'clip_ids' holds Python objects"):
        npz_embedder("n", str(pickled))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=_at(garbage) + r": not a readable .npz file"):
        npz_embedder("n", str(garbage))
    nan = _write_npz(tmp_path / "nan.npz", ["a.wav", "b.wav"], np.array([[0.0, 1.0], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="NaN or infinite values for 1 clips, the first 'b.wav'"):
        npz_embedder("n", nan)
    with pytest.raises(FileNotFoundError, match=_at(tmp_path / "absent.npz") + ": no such file"):
        npz_embedder("n", str(tmp_path / "absent.npz"))

    with pytest.raises(ModuleNotFoundError, match="hear:no_such_hear_module: no module named 'no_such_hear_module' "
                                                  "is installed"):
        sources.hear_embedder("m", "no_such_hear_module", clip_seconds=1.0, cache_dir=None)
    with pytest.raises(ValueError, match=r"hear:json \(.*\) has no load_model or get_scene_embeddings"):
        sources.hear_embedder("m", "json", clip_seconds=1.0, cache_dir=None)
    absent = str(tmp_path / "absent.txt")
    with pytest.raises(RuntimeError, match=re.escape(f"hear:{HEAR}@{absent}: {HEAR}.load_model({absent!r}) failed: "
                                                     f"FileNotFoundError")):
        sources.hear_embedder("m", HEAR, absent, clip_seconds=1.0, cache_dir=None)


def test_hear_cache_key_follows_module_model_file_and_clips(tmp_path, model_file):
    manifest = build_manifest("set", ["/d/a.wav", "/d/b.wav"], [(0,), (1,)], ("x", "y"))
    key = sources.hear_cache_key(tiny_hear, model_file, 8000, 8000, manifest)
    assert key == sources.hear_cache_key(tiny_hear, model_file, 8000, 8000, manifest)
    assert key != sources.hear_cache_key(tiny_hear, model_file, 8000, 4000, manifest)
    assert key != sources.hear_cache_key(tiny_hear, model_file, 8000, 8000, manifest.select(np.array([0])))
    with open(model_file, "w") as f:
        f.write("31")  # new weights: another size (and mtime)
    assert key != sources.hear_cache_key(tiny_hear, model_file, 8000, 8000, manifest)
