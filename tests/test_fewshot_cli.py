"""The few-shot command end to end on a synthesised folder dataset: JSON, table, sweep PNG, compare, cache reuse."""
import json
import os
import subprocess
import sys

import pytest

from tests.train_util import load_config
from uamix_jax.data.synthetic import make_demo_dataset
from uamix_jax.data.layouts import read_dataset
from uamix_jax.evaluation.embed import InputPolicy, embed_manifest
from uamix_jax.evaluation.encoders import random_encoder
from uamix_jax.evaluation.fewshot import evaluate_fewshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = {"dataset", "ways", "shots", "queries", "episodes", "accuracy_mean", "ci95", "seed", "encoder"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _config(arg="test"):
    return load_config("fewshot", arg)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(make_demo_dataset(tmp_path_factory.mktemp("fs") / "clips", num_classes=6, clips_per_class=8,
                                 seconds=1.0))


def _check_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert image[..., :3].std() > 0.05  # something is drawn, not a blank canvas


def test_command_writes_json_table_and_sweep_png(tmp_path, data_root):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "uamix_jax.main", "--config=configs/fewshot.py:test", f"--workdir={out}",
           f"--config.data.root={data_root}", "--config.fewshot.sweep=True"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdout = proc.stdout
    # 6 classes: N = 10, 15, 20 are skipped and said so; K = 5 leaves 3 queries per class, said so
    assert "skipping 10-way 1-shot: only 6 classes" in stdout and "skipping 20-way 5-shot" in stdout
    assert "5-way 5-shot: 6 classes have too few clips for 5 queries" in stdout
    table = stdout[stdout.index("encoder "):]
    assert " 5-way 1-shot" in table and " 5-way 5-shot" in table and "3 of 5" in table

    # folder data: outputs named after the folder ("clips"), not after the layout
    one = json.loads((out / "fewshot" / "clips_5way1shot.json").read_text())
    five = json.loads((out / "fewshot" / "clips_5way5shot.json").read_text())
    assert FIELDS <= set(one) and FIELDS <= set(five)
    assert (one["dataset"], one["ways"], one["shots"], one["queries"], one["episodes"], one["seed"]) == \
        ("clips", 5, 1, 5, 100, 0)
    assert one["encoder"] == "random:test:seed0"
    assert five["queries_min"] == 3 and set(five["short_classes"].values()) == {3}
    assert f"{one['accuracy_mean']:6.2f} ± {one['ci95']:.2f}" in table
    assert not (out / "fewshot" / "clips_10way1shot.json").exists()
    _check_png(out / "fewshot" / "clips_sweep.png")

    # the same numbers from the library, computed independently of the command's cache
    manifest = read_dataset("folder", data_root)
    encoder, variables = random_encoder("test", target_length=128, seed=0)
    emb, valid = embed_manifest(manifest, encoder, variables, policy=InputPolicy(target_length=128, clip_seconds=2.0),
                                batch_size=8, progress=False)
    assert valid.all()
    for result in (one, five):
        ref = evaluate_fewshot(emb, manifest.labels, ways=result["ways"], shots=result["shots"], queries=5,
                               episodes=100, seed=0)
        assert result["accuracy_mean"] == pytest.approx(ref["accuracy_mean"], abs=1e-9)
        assert result["ci95"] == pytest.approx(ref["ci95"], abs=1e-9)


def test_compare_encoders_and_cache_reuse(tmp_path, data_root, capsys):
    from uamix_jax.evaluation.fewshot_main import run_fewshot
    from tests.test_encoders import _fake_workdir

    workdir = tmp_path / "stage2"
    _fake_workdir(workdir, "test", 128, [(5, 3)])
    config = _config("test")
    config.init_from = str(workdir)
    config.data.root = data_root
    config.compare = "random=,again=" + str(workdir)  # a random-init line; the same workdir twice is dropped
    out = str(tmp_path / "out")

    rows = run_fewshot(config, out)
    first = capsys.readouterr().out
    assert [r["label"] for r in rows] == ["stage2", "random"]
    main = json.loads((tmp_path / "out" / "fewshot" / "clips_5way1shot.json").read_text())
    other = json.loads((tmp_path / "out" / "fewshot" / "random" / "clips_5way1shot.json").read_text())
    assert main["encoder"] == str(workdir) and other["encoder"] == "random:test:seed0"
    assert main["params_sha256"] != other["params_sha256"]
    _check_png(tmp_path / "out" / "fewshot" / "clips_compare.png")
    assert first.count("embeddings written to") == 2

    again = run_fewshot(config, out)
    second = capsys.readouterr().out
    assert second.count("embeddings reused from") == 2 and "written to" not in second
    assert [(r["accuracy_mean"], r["ci95"]) for r in again] == [(r["accuracy_mean"], r["ci95"]) for r in rows]


def test_bad_configs_are_named(tmp_path, data_root):
    from uamix_jax.evaluation.fewshot_main import run_fewshot

    config = _config("test")
    config.data.root = data_root
    config.fewshot.ways = 7  # not a sweep: an impossible setting is an error, not a skip
    with pytest.raises(ValueError, match="7-way 1-shot episodes need 7 classes with at least 2 labelled clips"):
        run_fewshot(config, str(tmp_path))
    config = _config("test")
    config.data.root = ""
    with pytest.raises(ValueError, match="config.data.root is empty"):
        run_fewshot(config, str(tmp_path))
    config = _config("test")
    config.data.root = data_root
    config.data.crop = "middle"
    with pytest.raises(ValueError, match=r"crop must be one of \('centre', 'windows'\) \(config.data.crop\)"):
        run_fewshot(config, str(tmp_path))


def test_two_folder_datasets_in_one_out_keep_apart_and_bad_audio_goes_to_out(tmp_path, data_root, capsys):
    import shutil

    from uamix_jax.data.bad_audio import read_bad_audio_log
    from uamix_jax.evaluation.fewshot_main import run_fewshot

    second = shutil.copytree(data_root, tmp_path / "rainforest")
    broken = sorted(p for p in second.rglob("*.wav"))[0]
    broken.write_bytes(b"RIFF....not audio at all" * 10)
    out = tmp_path / "out"
    config = _config("test")
    config.init_from = "baseline="  # a label for the random init, as compare takes them
    config.data.root = data_root
    first = run_fewshot(config, str(out))
    config.data.root = str(second)
    other = run_fewshot(config, str(out))
    stdout = capsys.readouterr().out
    assert [r["label"] for r in first + other] == ["baseline", "baseline"]
    a = json.loads((out / "fewshot" / "clips_5way1shot.json").read_text())
    b = json.loads((out / "fewshot" / "rainforest_5way1shot.json").read_text())
    assert (a["dataset"], b["dataset"]) == ("clips", "rainforest")
    assert (a["accuracy_mean"], b["accuracy_mean"]) == (first[0]["accuracy_mean"], other[0]["accuracy_mean"])
    assert a["num_clips"] == 48 and b["num_clips"] == 47  # the unreadable clip is left out of the second
    # the bad clip is listed where training lists its own: OUT/bad_audio.txt
    assert list(read_bad_audio_log(out / "bad_audio.txt")) == [str(broken)]
    assert f"(see {out / 'bad_audio.txt'})" in stdout
    config.data.label = "rain forest"  # an explicit label wins over the folder name (and is made file-safe)
    run_fewshot(config, str(out))
    assert json.loads((out / "fewshot" / "rain_forest_5way1shot.json").read_text())["dataset"] == "rain_forest"


def test_init_from_and_compare_take_labels_and_paths_with_equals_signs(tmp_path):
    from uamix_jax.evaluation.fewshot_main import parse_encoders

    run = tmp_path / "runs" / "lr=3e-4"
    run.mkdir(parents=True)
    config = _config("test")
    config.init_from = f"tuned={run}"
    config.compare = f"{run.parent}/lr=3e-4,plain="
    # the second item exists as a whole path: it is the same encoder as init_from, so its line is dropped
    assert [(s.label, s.path) for s in parse_encoders(config)] == [("tuned", str(run)), ("plain", "")]
    config.init_from, config.compare = str(run), ""
    assert [(s.label, s.path) for s in parse_encoders(config)] == [("lr=3e-4", str(run))]
