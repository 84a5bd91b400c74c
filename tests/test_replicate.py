"""benchmarks/replicate.py: stage identity, the dev/test class split, the report's pieces, and the toy run end to end.

The toy run: an unlabelled nested folder and two labelled `folder` sets synthesised here (uamix_jax.data.synthetic; no
Debian package), a 4-block test ViT: MAE pretraining → stage 1 → stage 2 for T-CutMix and No-Mix, two seeds →
2-way few-shot on the test halves of the sets' classes.
"""
import json
import os
import shutil
import sys
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import replicate  # noqa: E402
import replicate_report  # noqa: E402

from uamix_jax.audio.features import normalize_fbank, waveform_to_fbank  # noqa: E402
from uamix_jax.data.layouts import class_halves, read_dataset  # noqa: E402
from uamix_jax.data.synthetic import SYNTH_CLASSES, make_demo_dataset  # noqa: E402


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
    names = list(SYNTH_CLASSES)
    make_demo_dataset(tmp_path / "set_a", classes=names[4:10], clips_per_class=6, seconds=1.5, seed=2,
                      odd_formats=False)
    make_demo_dataset(tmp_path / "set_b", classes=names[8:14], clips_per_class=6, seconds=1.5, seed=3,
                      odd_formats=False)
    out = tmp_path / "out"
    argv = ["--out", str(out), "--toy", "--no-progress", "--unlabelled", str(tmp_path / "corpus"),
            "--eval", f"alpha={tmp_path / 'set_a'}", "--eval", f"beta={tmp_path / 'set_b'}",
            "--variants", "t_cutmix,no_mix", "--seeds", "2"]
    start = time.perf_counter()
    replicate.main(argv)
    seconds = time.perf_counter() - start

    result = json.loads((out / "replicate.json").read_text())
    tuned = ["uaMix-MAE (T-CutMix)", "No-Mix"]
    # a row per seed for the tuned encoders; the MAE and log-mel are trained once (seed None)
    keys = sorted((r["encoder"], str(r["seed"]), r["eval"], r["shots"]) for r in result["rows"])
    want = [(e, str(s), d, k) for e in tuned for s in (0, 1) for d in ("alpha", "beta") for k in (1, 2)]
    want += [(e, "None", d, k) for e in ("log-mel", "MAE") for d in ("alpha", "beta") for k in (1, 2)]
    assert keys == sorted(want)
    # test classes only in the report, checked by name; dev + test = every class, disjoint
    for name, root in (("alpha", tmp_path / "set_a"), ("beta", tmp_path / "set_b")):
        halves = result["classes"][name]
        every = read_dataset("folder", str(root)).class_names
        assert sorted(halves["dev"] + halves["test"]) == sorted(every) and not set(halves["dev"]) & set(halves["test"])
        for r in result["rows"]:
            if r["eval"] == name:
                assert r["classes"] == "test" and set(r["class_names"]) <= set(halves["test"]), r
        # every encoder of a set and setting was scored on the same episodes
        for shots in (1, 2):
            hashes = {r["episodes_sha256"] for r in result["rows"] if (r["eval"], r["shots"]) == (name, shots)}
            assert len(hashes) == 1
    # deltas: each variant against the MAE, T-CutMix against No-Mix; per set and over the sets; both seeds pooled
    pairs = sorted({(d["a"], d["b"]) for d in result["deltas"]})
    assert pairs == sorted([(tuned[0], "MAE"), (tuned[1], "MAE"), (tuned[0], tuned[1])])
    assert {d["eval"] for d in result["deltas"]} == {"alpha", "beta", "mean"}
    assert all(d["seeds"] == [0, 1] and len(d["seed_means"]) == 2 for d in result["deltas"])
    # learning curves: dev classes during MAE pretraining (every 2 of 4 steps) and each stage 2 (every step)
    curves = {(c["encoder"], c["seed"]): c["points"] for c in result["curves"]}
    assert [step for step, _ in curves[("MAE", None)]["alpha"]] == [2, 4]
    assert [step for step, _ in curves[(tuned[0], 1)]["beta"]] == [1, 2]
    for name in ("curves.png", "replicate.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "replicate.md").read_text()
    assert "| uaMix-MAE (T-CutMix) |" in md and "| Δ uaMix-MAE (T-CutMix) − MAE |" in md
    assert "pretrain_mae.py:test" in (out / "commands.sh").read_text()
    print(f"toy replication: {seconds:.0f} s")

    # a second run reuses every finished stage: the checkpoints are not touched
    stamp = {p: os.path.getmtime(p) for p in out.glob("stages/*/checkpoints/*")}
    replicate.main(argv)
    assert stamp and stamp == {p: os.path.getmtime(p) for p in out.glob("stages/*/checkpoints/*")}
    again = json.loads((out / "replicate.json").read_text())
    assert [r["accuracy_mean"] for r in again["rows"]] == [r["accuracy_mean"] for r in result["rows"]]
    assert all(v == 0.0 for k, v in again["timings"].items() if "stage" in k or k == "MAE pretraining")


def test_stage_workdir_changes_with_every_setting_and_only_then(tmp_path):
    budget = replicate.BUDGETS["toy"]
    sets = {"alpha": str(tmp_path / "a")}
    mae = replicate.mae_stage(str(tmp_path), budget, str(tmp_path / "corpus"), "data0", sets, True)
    assert mae.workdir == replicate.mae_stage(str(tmp_path), budget, str(tmp_path / "corpus"), "data0", sets,
                                              False).workdir  # progress bars change nothing
    assert mae.workdir != replicate.mae_stage(str(tmp_path), budget, str(tmp_path / "corpus"), "data1", sets,
                                              True).workdir  # other training data

    def stage(**changes):
        overrides = {"train.total_steps": 10, "optim.lr": 1e-3, "seed": 0, **changes.pop("overrides", {})}
        return replicate.Stage("s", os.path.join(replicate.CONFIGS, "stage2.py"), overrides, str(tmp_path), "data0",
                               changes.pop("parent", mae))

    base = stage()
    assert stage().workdir == base.workdir and base.workdir.startswith(str(tmp_path / "stages" / "s-"))
    others = [stage(overrides={"optim.lr": 3e-4}), stage(overrides={"train.total_steps": 11}),
              stage(overrides={"seed": 1}), stage(parent=stage(overrides={"seed": 2}))]
    assert len({base.workdir, *(o.workdir for o in others)}) == 5
    assert not base.done()  # no workdir yet
    (tmp_path / "w").mkdir()
    os.makedirs(os.path.join(base.workdir, "checkpoints", "3"))
    assert not base.done()  # unfinished: it resumes


def test_class_halves_are_deterministic_disjoint_and_cover_every_class():
    names = [f"class_{i:02d}" for i in range(13)]
    dev, test = class_halves(names)
    assert (dev, test) == class_halves(list(reversed(names)))  # independent of the order a reader lists them
    assert sorted(dev + test) == names and not set(dev) & set(test) and (len(dev), len(test)) == (7, 6)
    assert dev != names[:7]  # mixed, not the alphabet cut in two


def test_too_small_a_set_is_named(tmp_path):
    make_demo_dataset(tmp_path / "tiny", num_classes=6, clips_per_class=2, seconds=0.5, odd_formats=False)
    with pytest.raises(ValueError, match=r"--eval tiny=.*6 classes split into 3 dev and 3 test classes; 5-way"):
        replicate.class_split({"tiny": str(tmp_path / "tiny")}, 5)


def test_logmel_stats_matches_numpy_on_the_clip_frames():
    rng = np.random.default_rng(0)
    t, stats = 64, (-4.0, 3.0)
    lengths = np.array([16000, 6000, 400 + 160 * 10])
    wave = np.zeros((3, 16000), np.float32)
    for i, n in enumerate(lengths):
        wave[i, :n] = rng.standard_normal(n) * 0.1
    fbank, n_valid = waveform_to_fbank(wave, lengths)
    fbank = np.asarray(fbank)[:, :t]  # 16000 samples = 98 frames: cropped to 64; the others padded with zeros
    model = replicate_report.LogMelStats(t, stats)
    with jax.default_matmul_precision("highest"):
        _, emb = model.apply({}, normalize_fbank(fbank, *replicate_report.IDENTITY_STATS))
    for i in range(3):
        frames = min(int(n_valid[i]), t)
        z = (fbank[i, :frames] - stats[0]) / (2 * stats[1])
        expected = np.concatenate([z.mean(0), z.std(0)])
        np.testing.assert_allclose(np.asarray(emb[i]), expected, rtol=1e-5, atol=1e-5)
    assert int(n_valid[2]) == 11 and emb.shape == (3, 256)


def test_deltas_and_table_from_known_scores():
    """Deltas pool per-episode differences over sets and seeds exactly as paired_over_seeds does."""
    rng = np.random.default_rng(0)
    scores = {}
    for e in ("MAE", "log-mel"):
        for s in ("words", "speakers"):
            scores[(e, None, s, 5, 1)] = rng.integers(0, 6, 50) / 5
    for seed in (0, 1, 2):
        for s in ("words", "speakers"):
            scores[("uaMix-MAE (T-CutMix)", seed, s, 5, 1)] = np.clip(scores[("MAE", None, s, 5, 1)] + 0.2, 0, 1)
    deltas = replicate_report.compute_deltas(scores, ["uaMix-MAE (T-CutMix)"], [0, 1, 2], ["words", "speakers"],
                                             [(5, 1)])
    mean = [d for d in deltas if d["eval"] == "mean"][0]
    want = np.mean([100 * (scores[("uaMix-MAE (T-CutMix)", 0, s, 5, 1)] - scores[("MAE", None, s, 5, 1)]).mean()
                    for s in ("words", "speakers")])
    assert mean["mean"] == pytest.approx(want) and mean["ci95_low"] == pytest.approx(want)  # identical seeds: width 0
    assert mean["losses"] == 0 and mean["wins"] + mean["ties"] == 3 * 100
    rows = [{"encoder": e, "eval": s, "ways": 5, "shots": 1, "accuracy_mean": a, "ci95": 1.23}
            for e, a in (("log-mel", 40.0), ("MAE", 55.54)) for s in ("words", "speakers")]
    md = replicate_report.markdown_table(rows, deltas)
    assert "| encoder | words | speakers | mean |" in md and "| MAE | 55.5 ± 1.2 | 55.5 ± 1.2 | 55.5 |" in md
    assert "| Δ uaMix-MAE (T-CutMix) − MAE |" in md
