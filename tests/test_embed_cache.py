"""Embedding extraction (the input policy against a direct computation) and the on-disk cache (reuse vs rebuild)."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf

from uamix_jax.audio.features import audiomae_features, normalize_fbank, waveform_to_fbank
from uamix_jax.audio.io import load_audio
from uamix_jax.data.synthetic import make_demo_dataset
from uamix_jax.data.layouts import read_dataset
from uamix_jax.evaluation import embed
from uamix_jax.evaluation.embed import InputPolicy, cached_embeddings, embed_manifest
from uamix_jax.evaluation.encoders import random_encoder

T = 128  # frames: 1.27 s of audio per window
STATS = (-4.2677393, 4.5689974)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", num_classes=3, clips_per_class=4,
                             seconds=1.0)
    # one long clip (4 s, 3.1 windows) and one short clip (0.5 s) so crops and padding are exercised
    rng = np.random.default_rng(0)
    t = np.arange(64000) / 16000
    sf.write(os.path.join(root, "low_tone", "long.wav"), 0.3 * np.sin(2 * np.pi * (300 + 200 * t) * t)
             + 0.01 * rng.standard_normal(t.size), 16000)
    sf.write(os.path.join(root, "high_tone", "short.wav"), 0.2 * rng.standard_normal(8000), 16000)
    return read_dataset("folder", str(root))


@pytest.fixture(scope="module")
def model():
    return random_encoder("test", target_length=T, seed=0)


def _direct_centre(encoder, variables, paths, policy):
    """The centre policy written out: centre crop of (T-1)·160 + 400 samples, then AudioMAE's features. [len, D]"""
    n = policy.window_samples
    inputs = []
    for path in paths:
        wave = load_audio(path, 16000)
        if wave.shape[0] > n:
            start = (wave.shape[0] - n) // 2
            wave = wave[start:start + n]
        inputs.append(audiomae_features(wave[None], target_length=T, stats=STATS))
    return np.asarray(encoder.apply(variables, np.concatenate(inputs))[1])


def test_centre_crop_matches_a_direct_computation(dataset, model):
    encoder, variables = model
    policy = InputPolicy(target_length=T, stats="audioset", crop="centre")
    emb, valid = embed_manifest(dataset, encoder, variables, policy=policy, batch_size=5, progress=False)
    assert emb.shape == (len(dataset), 32) and valid.all()
    np.testing.assert_allclose(emb, _direct_centre(encoder, variables, dataset.paths.tolist(), policy), atol=2e-5)


def test_windows_average_the_full_windows(dataset, model):
    encoder, variables = model
    policy = InputPolicy(target_length=T, stats="audioset", crop="windows", clip_seconds=6.0)
    assert policy.num_windows == 5  # 598 frames
    emb, valid = embed_manifest(dataset, encoder, variables, policy=policy, batch_size=8, progress=False)
    assert valid.all()
    for i, path in enumerate(dataset.paths):
        wave = load_audio(path, 16000)[None]
        fbank = np.asarray(waveform_to_fbank(wave)[0][0])  # [frames, 128]
        starts = [s for s in range(0, fbank.shape[0], T) if s == 0 or fbank.shape[0] - s >= T // 2]
        windows = []
        for s in starts:
            w = np.zeros((T, 128), np.float32)
            part = fbank[s:s + T]
            w[:part.shape[0]] = part
            windows.append(np.asarray(encoder.apply(variables, normalize_fbank(w[None], *STATS))[1][0]))
        if path.endswith("long.wav"):
            assert len(starts) == 3  # frames 0-127, 128-255, 256-383; the 14-frame tail does not count
        np.testing.assert_allclose(emb[i], np.mean(windows, axis=0), atol=2e-5, err_msg=path)


def test_bad_clip_is_left_out(tmp_path, model):
    encoder, variables = model
    root = make_demo_dataset(tmp_path / "d", num_classes=2, clips_per_class=3, seconds=1.0)
    with open(os.path.join(root, "high_tone", "high_tone_001.wav"), "wb") as f:
        f.write(b"not audio at all")
    manifest = read_dataset("folder", str(root))
    policy = InputPolicy(target_length=T)
    emb, valid = embed_manifest(manifest, encoder, variables, policy=policy, batch_size=4, progress=False,
                                bad_audio_log=tmp_path / "bad.txt")
    bad = manifest.paths.tolist().index(os.path.join(root, "high_tone", "high_tone_001.wav"))
    assert not valid[bad] and valid.sum() == len(manifest) - 1 and not emb[bad].any()
    assert "high_tone_001.wav" in (tmp_path / "bad.txt").read_text()
    good = [i for i in range(len(manifest)) if i != bad]
    np.testing.assert_allclose(emb[good], _direct_centre(encoder, variables, [manifest.paths[i] for i in good], policy),
                               atol=2e-5)


def test_cache_reused_when_unchanged_and_rebuilt_when_the_encoder_changes(tmp_path, dataset, model, monkeypatch):
    encoder, variables = model
    calls = []
    real = embed.embed_manifest

    def counting(*args, **kwargs):
        calls.append(kwargs["policy"])
        return real(*args, **kwargs)

    monkeypatch.setattr(embed, "embed_manifest", counting)
    policy = InputPolicy(target_length=T)
    cache = tmp_path / "embeddings"

    first, valid, path, reused = cached_embeddings(dataset, encoder, variables, policy=policy, cache_dir=cache,
                                                   batch_size=8, progress=False)
    assert (len(calls), reused) == (1, False) and os.path.isfile(path)
    mtime = os.stat(path).st_mtime_ns

    # unchanged: loaded from disk, the encoder is not run, the file is not rewritten
    again, valid2, path2, reused = cached_embeddings(dataset, encoder, variables, policy=policy, cache_dir=cache,
                                                     batch_size=4, progress=False)
    assert (len(calls), reused, path2) == (1, True, path) and os.stat(path).st_mtime_ns == mtime
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(valid2, valid)

    # the same encoder with one weight changed (e.g. a newer checkpoint at the same path): rebuilt
    changed = jax.tree.map(lambda x: x, variables)
    changed["params"]["blocks_3"]["mlp"]["fc2"]["kernel"] = changed["params"]["blocks_3"]["mlp"]["fc2"]["kernel"] * 1.01
    new, _, path3, reused = cached_embeddings(dataset, encoder, changed, policy=policy, cache_dir=cache,
                                              batch_size=8, progress=False)
    assert (len(calls), reused) == (2, False) and path3 != path
    assert np.abs(new - first).max() > 1e-5

    # the input policy or the manifest changed: rebuilt; back to the first setting: reused
    cached_embeddings(dataset, encoder, variables, policy=InputPolicy(target_length=T, stats="esc50"),
                      cache_dir=cache, batch_size=8, progress=False)
    cached_embeddings(dataset.select(np.arange(len(dataset) - 1)), encoder, variables, policy=policy,
                      cache_dir=cache, batch_size=8, progress=False)
    assert len(calls) == 4
    *_, reused = cached_embeddings(dataset, encoder, variables, policy=policy, cache_dir=cache, progress=False)
    assert reused and len(calls) == 4


def test_corrupt_cache_file_is_recomputed(tmp_path, dataset, model):
    encoder, variables = model
    policy = InputPolicy(target_length=T)
    emb, _, path, _ = cached_embeddings(dataset, encoder, variables, policy=policy, cache_dir=tmp_path,
                                        progress=False)
    with open(path, "wb") as f:
        f.write(b"truncated")
    again, _, _, reused = cached_embeddings(dataset, encoder, variables, policy=policy, cache_dir=tmp_path,
                                            progress=False)
    assert not reused
    np.testing.assert_allclose(again, emb, atol=1e-6)


def test_policy_errors():
    with pytest.raises(ValueError, match="crop must be one of"):
        InputPolicy(crop="random")
    with pytest.raises(ValueError, match="unknown normalisation stats 'imagenet'"):
        InputPolicy(stats="imagenet")
    with pytest.raises(ValueError, match="std > 0"):
        InputPolicy(stats=(-4.0, 0.0))
    assert InputPolicy(stats=[-6, 5]).mean_std() == (-6.0, 5.0)
    encoder, variables = random_encoder("test", target_length=T)
    with pytest.raises(ValueError, match="built for T = 128 frames but the input policy has target_length = 256"):
        embed.make_embed_fn(encoder, InputPolicy(target_length=256))
    assert InputPolicy(target_length=1024, clip_seconds=30.0).clip_samples == 164080
    assert InputPolicy(target_length=1024, crop="windows", clip_seconds=30.0).num_windows == 3


def _embed_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("embed_tool", os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "embed.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_embed_tool_on_a_folder(tmp_path, capsys):
    from tests.test_encoders import _fake_workdir

    from uamix_jax.evaluation.encoders import load_encoder

    audio = make_demo_dataset(tmp_path / "clips", num_classes=2, clips_per_class=3, seconds=1.0)
    os.makedirs(os.path.join(audio, "nested", "deeper"))
    sf.write(os.path.join(audio, "nested", "deeper", "x.flac"), 0.1 * np.ones(12000), 16000)
    with open(os.path.join(audio, "low_tone", "broken.wav"), "wb") as f:
        f.write(b"RIFF....")
    _fake_workdir(tmp_path / "w", "test", 128, [(1, 4)])
    tool = _embed_tool()
    out = tmp_path / "out" / "e.npz"
    rc = tool.main(["--encoder", str(tmp_path / "w"), "--audio", str(audio), "--out", str(out), "--batch-size", "4",
                    "--no-progress"])
    assert rc == 0
    assert "7 embeddings of dimension 32; 1 files could not be read" in capsys.readouterr().out
    with np.load(out) as f:
        emb, ids, valid, failed = f["embeddings"], list(f["clip_ids"]), f["valid"], list(f["failed"])
    assert failed == ["low_tone/broken.wav"] and ids[int(np.flatnonzero(~valid)[0])] == "low_tone/broken.wav"
    assert not emb[~valid].any()  # the unreadable file's row is zero, and marked invalid
    # 6 demo clips + the nested flac; the broken file is left out
    paths = [p for p, ok in zip(ids, valid) if ok]
    emb = emb[valid]
    assert len(paths) == 7 and ids == sorted(ids) and "nested/deeper/x.flac" in paths
    encoder, variables = load_encoder(str(tmp_path / "w"))
    policy = InputPolicy(target_length=128)
    np.testing.assert_allclose(emb, _direct_centre(encoder, variables, [os.path.join(audio, p) for p in paths], policy),
                               atol=2e-5)


def test_embed_tool_errors(tmp_path, capsys):
    tool = _embed_tool()
    assert tool.main(["--encoder", str(tmp_path), "--audio", str(tmp_path / "none"), "--out", "x.npz"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "c.wav").write_bytes(b"")
    assert tool.main(["--encoder", str(tmp_path / "nowhere"), "--audio", str(tmp_path / "a"), "--out", "x.npz"]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "tools/embed.py", "--help"], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0 and "--encoder" in proc.stdout and "--audio" in proc.stdout
