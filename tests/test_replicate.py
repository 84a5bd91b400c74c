"""benchmarks/replicate.py end to end at its toy size, and its log-mel baseline against a numpy oracle.

The toy run: an unlabelled nested folder and two labelled `folder` sets synthesised here (uamix_jax.data.synthetic; no
Debian package), a 4-block test ViT: MAE pretraining → stage 1 → stage 2 for T-CutMix and No-Mix → few-shot.
"""
import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import replicate  # noqa: E402

from uamix_jax.audio.features import normalize_fbank, waveform_to_fbank  # noqa: E402
from uamix_jax.data.synthetic import make_demo_dataset  # noqa: E402


def _nest_unlabelled(src: str, dst: str) -> None:
    """The demo clips moved into nested folders (a/b/<clip>.wav), so only a recursive reader finds them all."""
    for cls in sorted(os.listdir(src)):
        for i, name in enumerate(sorted(os.listdir(os.path.join(src, cls)))):
            target = os.path.join(dst, cls[:3], f"part{i % 2}")
            os.makedirs(target, exist_ok=True)
            shutil.move(os.path.join(src, cls, name), os.path.join(target, name))


@pytest.mark.slow
def test_replicate_toy_end_to_end(tmp_path):
    make_demo_dataset(tmp_path / "corpus_flat", num_classes=4, clips_per_class=8, seconds=1.5, seed=1,
                      odd_formats=False)
    _nest_unlabelled(str(tmp_path / "corpus_flat"), str(tmp_path / "corpus"))
    make_demo_dataset(tmp_path / "set_a", num_classes=6, clips_per_class=7, seconds=1.5, seed=2, odd_formats=False)
    make_demo_dataset(tmp_path / "set_b", num_classes=5, clips_per_class=6, seconds=1.5, seed=3, odd_formats=False)
    out = tmp_path / "out"
    argv = ["--out", str(out), "--toy", "--no-progress", "--unlabelled", str(tmp_path / "corpus"),
            "--eval", f"alpha={tmp_path / 'set_a'}", "--eval", f"beta={tmp_path / 'set_b'}",
            "--variants", "t_cutmix,no_mix"]
    replicate.main(argv)

    result = json.loads((out / "replicate.json").read_text())
    encoders = list(replicate.ENCODER_NAMES[:4])
    assert encoders == ["log-mel", "MAE", "uaMix-MAE (T-CutMix)", "No-Mix"]
    keys = sorted((r["encoder"], r["eval"], r["ways"], r["shots"]) for r in result["rows"])
    assert keys == sorted((e, s, 5, k) for e in encoders for s in ("alpha", "beta") for k in (1, 5))
    for r in result["rows"]:
        assert 0.0 <= r["accuracy_mean"] <= 100.0 and r["ci95"] >= 0.0 and 0.0 <= r["mean_unit_norm"] <= 1.0 + 1e-6
    # log-mel features separate the demo's tone classes far above chance (20 %)
    logmel = [r["accuracy_mean"] for r in result["rows"] if r["encoder"] == "log-mel"]
    assert min(logmel) > 50.0, logmel
    mae_dir = str(out / "mae")
    for variant, method in (("t_cutmix", "t_cutmix"), ("no_mix", "none")):
        s1 = json.loads((out / variant / "stage1" / "config.json").read_text())
        s2 = json.loads((out / variant / "stage2" / "config.json").read_text())
        assert s1["mix"]["method"] == method and s2["mix"]["method"] == method
        assert s1["init_from"] == mae_dir
        assert s2["init_from"] == str(out / variant / "stage1")
        assert s1["model"]["size"] == s2["model"]["size"] == "test"
    md = (out / "replicate.md").read_text()
    assert "| uaMix-MAE (T-CutMix) |" in md and "alpha" in md and "beta" in md
    assert (out / "replicate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pretrain_mae.py:test" in (out / "commands.sh").read_text()

    # a second run reuses every finished stage: the checkpoints are not touched
    stamp = {p: os.path.getmtime(p) for p in out.glob("*/stage*/checkpoints/*")}
    replicate.main(argv)
    assert stamp and stamp == {p: os.path.getmtime(p) for p in out.glob("*/stage*/checkpoints/*")}
    again = json.loads((out / "replicate.json").read_text())
    assert [r["accuracy_mean"] for r in again["rows"]] == [r["accuracy_mean"] for r in result["rows"]]
    assert all(v == 0.0 for k, v in again["timings"].items() if "stage" in k or k == "MAE pretraining")


def test_logmel_stats_matches_numpy_on_the_clip_frames():
    rng = np.random.default_rng(0)
    t, stats = 64, (-4.0, 3.0)
    lengths = np.array([16000, 6000, 400 + 160 * 10])
    wave = np.zeros((3, 16000), np.float32)
    for i, n in enumerate(lengths):
        wave[i, :n] = rng.standard_normal(n) * 0.1
    fbank, n_valid = waveform_to_fbank(wave, lengths)
    fbank = np.asarray(fbank)[:, :t]  # 16000 samples = 98 frames: cropped to 64; the others padded with zeros
    model = replicate.LogMelStats(t, stats)
    with jax.default_matmul_precision("highest"):
        _, emb = model.apply({}, normalize_fbank(fbank, *replicate.IDENTITY_STATS))
    for i in range(3):
        frames = min(int(n_valid[i]), t)
        z = (fbank[i, :frames] - stats[0]) / (2 * stats[1])
        expected = np.concatenate([z.mean(0), z.std(0)])
        np.testing.assert_allclose(np.asarray(emb[i]), expected, rtol=1e-5, atol=1e-5)
    assert int(n_valid[2]) == 11 and emb.shape == (3, 256)


def test_markdown_table_layout():
    rows = [{"encoder": e, "eval": s, "ways": 5, "shots": k, "accuracy_mean": a, "ci95": 1.23}
            for k in (1, 5) for e, a in (("log-mel", 40.0), ("MAE", 55.54)) for s in ("words", "speakers")]
    md = replicate.markdown_table(rows)
    assert "| encoder | words | speakers |" in md
    assert "| MAE | 55.5 ± 1.2 | 55.5 ± 1.2 |" in md
    assert md.count("| log-mel |") == 2 and "**5-way 5-shot**" in md


def test_stage_done_only_at_its_own_final_step(tmp_path):
    stage = replicate.Stage("s", "configs/stage1.py", {"train.total_steps": 5}, str(tmp_path / "w"))
    assert not stage.done()  # no workdir yet
    (tmp_path / "w" / "checkpoints" / "3").mkdir(parents=True)
    assert not stage.done()  # unfinished: it resumes
    (tmp_path / "w" / "checkpoints" / "5").mkdir()
    assert stage.done()
    (tmp_path / "w" / "checkpoints" / "8").mkdir()  # trained further under another budget
    with pytest.raises(ValueError, match="another budget"):
        stage.done()
