"""The training loop end to end: kill and resume, NaN stop, the demo pipeline."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from tests.tb_util import scalar_series
from tests.train_util import ROOT, load_config
from uamix_jax.data.synthetic import make_demo_dataset
from uamix_jax.train.checkpoint import Checkpointer, restore_state_dict
from uamix_jax.train.loop import NonFiniteLossError
from uamix_jax.train.tune import train_and_evaluate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "folder", num_classes=4, clips_per_class=8,
                             seconds=1.5, odd_formats=False)


def _main(workdir, data_root, *extra, kill_at: int | None = None) -> subprocess.CompletedProcess:
    entry = ["uamix_jax.main"] if kill_at is None else ["tests.fault_injection", str(kill_at)]
    cmd = [sys.executable, "-m", *entry, "--config=configs/test.py:stage2", f"--workdir={workdir}",
           f"--config.data.root={data_root}", "--config.train.total_steps=7", "--config.train.checkpoint_every=2",
           *extra]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.environ["UAMIX_TEST_JAX_CACHE"])
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _flat(tree):
    return {"/".join(map(str, k)): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def _in_process(workdir, data_root):
    """The same run as `_main` without the kill, in this process (its 8 fake devices, as the subprocess has)."""
    config = load_config("test", "stage2")
    config.data.root = data_root
    config.train.update(total_steps=7, checkpoint_every=2)
    train_and_evaluate(config, str(workdir))


def test_sigkill_and_resume_is_bitwise_identical(tmp_path, tiny_data):
    _in_process(tmp_path / "straight", tiny_data)
    # killed after step 5: the checkpoint of step 4 is on disk, step 5's metrics line must be dropped on resume
    killed = _main(tmp_path / "resumed", tiny_data, kill_at=5)
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-3000:])
    assert Checkpointer(str(tmp_path / "resumed")).latest_step() == 4
    rows = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 5
    _in_process(tmp_path / "resumed", tiny_data)

    a = _flat(restore_state_dict(str(tmp_path / "straight")))
    b = _flat(restore_state_dict(str(tmp_path / "resumed")))
    assert a.keys() == b.keys()
    assert int(a["step"]) == 7
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (tmp_path / "straight" / "metrics.jsonl").read_text() == (tmp_path / "resumed" / "metrics.jsonl").read_text()
    # TensorBoard: the same losses as the JSONL (float32), and the killed run's step-5 event purged on resume
    jsonl = {r["step"]: r["loss"] for r in map(json.loads, (tmp_path / "straight" / "metrics.jsonl").open())}
    straight_tb = scalar_series(tmp_path / "straight" / "tensorboard", "loss")
    assert sorted(straight_tb) == sorted(jsonl) == list(range(1, 8))
    np.testing.assert_array_equal([straight_tb[k] for k in jsonl], np.float32([jsonl[k] for k in jsonl]))
    assert len(list((tmp_path / "resumed" / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert scalar_series(tmp_path / "resumed" / "tensorboard", "loss") == straight_tb


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_data, monkeypatch):
    """A NaN clip in the third batch: steps 1-2 are checkpointed, step 3's loss is NaN, nothing after is saved."""
    from uamix_jax.train import loop

    real, calls = loop.global_batch, []

    def poisoned(local, mesh):
        calls.append(1)
        if len(calls) == 3:
            local = dict(local, waveform=local["waveform"].copy())
            local["waveform"][0, 1000] = np.nan
        return real(local, mesh)

    monkeypatch.setattr(loop, "global_batch", poisoned)
    config = load_config("test", "stage1")
    config.data.root = tiny_data
    config.train.update(total_steps=5, checkpoint_every=1, log_every=2)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3.*last good checkpoint is step 2"):
        train_and_evaluate(config, str(tmp_path / "w"))
    assert Checkpointer(str(tmp_path / "w")).all_steps() == [1, 2]
    saved = restore_state_dict(str(tmp_path / "w"))
    assert int(saved["step"]) == 2
    assert all(np.all(np.isfinite(v)) for v in _flat(saved["params"]).values())


def test_non_finite_parameters_are_never_checkpointed(tmp_path, tiny_data):
    config = load_config("test", "stage1")
    config.data.root = tiny_data
    config.train.update(total_steps=3, checkpoint_every=1, log_every=1)
    config.optim.lr = float("inf")  # step 1's loss is finite, the parameters it produces are not
    with pytest.raises(NonFiniteLossError, match=r"parameters are not finite after step 1.*checkpoint is step None"):
        train_and_evaluate(config, str(tmp_path / "w"))
    assert Checkpointer(str(tmp_path / "w")).all_steps() == []


def test_demo_as_the_readme_runs_it(tmp_path):
    """The README's first command, on one CPU device as a user runs it: the few-shot classes are not the tuning
    classes, tuning gains at least 4 points on them (paired over the same 200 episodes; measured +7.5, 95 % CI
    [5.8, 9.1]), and the figures the README quotes are the ones the demo prints and writes."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.environ["UAMIX_TEST_JAX_CACHE"])
    flags = env.pop("XLA_FLAGS").replace("--xla_force_host_platform_device_count=8", "").strip()
    if flags:
        env["XLA_FLAGS"] = flags
    cmd = [sys.executable, "-m", "uamix_jax.main", "--config=configs/stage2.py:demo", f"--workdir={tmp_path}",
           "--config.progress=False"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    tuning = set(os.listdir(tmp_path / "data"))
    fewshot = set(os.listdir(tmp_path / "fewshot_data"))
    assert len(tuning) == 8 and len(fewshot) >= 5 and not tuning & fewshot, (tuning, fewshot)
    assert Checkpointer(str(tmp_path / "stage2")).latest_step() == 80 * 6  # 192 clips / 32 per batch = 6 an epoch
    results = json.loads((tmp_path / "fewshot" / "demo.json").read_text())
    assert results["stage1"]["episodes_sha256"] == results["stage2"]["episodes_sha256"]
    gain = results["paired_difference"]
    assert gain["mean"] >= 4.0 and gain["ci95_low"] > 0, gain
    (line,) = [x for x in run.stdout.splitlines() if x.startswith("demo few-shot")]
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert line in readme, line
    before, after = results["stage1"], results["stage2"]
    results_section = " ".join(readme.split("## Results")[1].split())
    for r in (before, after):
        assert f"{r['accuracy_mean']:.1f} ± {r['ci95']:.1f} %" in results_section, r
    assert (f"a paired gain of {gain['mean']:.1f} points (95 % CI {gain['ci95_low']:.1f} to {gain['ci95_high']:.1f}; "
            f"better in {gain['wins']} of {gain['episodes']} episodes, worse in {gain['losses']})") in results_section


def test_stage1_from_audiomae_pth_then_stage2_from_stage1_workdir(tmp_path, tiny_data):
    """init_from cascade: a real-format AudioMAE .pth for stage 1 (encoder kept bitwise, frozen), then stage 1's
    workdir for stage 2 (encoder, head, BatchNorm statistics and the filled queue carried over; EMA = projector)."""
    torch = pytest.importorskip("torch")
    from uamix_jax.interop.audiomae import load_audiomae
    from uamix_jax.interop.torch_audiomae import MaskedAutoencoderViT, randomize_, save_audiomae_checkpoint
    from tests.train_util import fresh_state
    from uamix_jax.train.tune import load_init

    torch.manual_seed(0)
    model = randomize_(MaskedAutoencoderViT(width=32, depth=4, num_heads=2, mlp_dim=64, decoder_depth=1))
    pth = tmp_path / "pretrained.pth"
    save_audiomae_checkpoint(model, pth)
    _, converted = load_audiomae(pth, target_length=128)

    s1 = load_config("test", "stage1")
    s1.data.root, s1.init_from = tiny_data, str(pth)
    s1.train.update(total_steps=2, checkpoint_every=2)
    train_and_evaluate(s1, str(tmp_path / "w1"))
    saved1 = restore_state_dict(str(tmp_path / "w1"))
    want, got = _flat(converted["params"]), _flat(saved1["params"]["encoder"])
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert np.sum(saved1["queue_ids"] >= 0) == 2 * s1.train.global_batch

    s2 = load_config("test", "stage2")
    s2.nnclr.queue_size = s1.nnclr.queue_size
    s2.seed = 5
    _, _, fresh, _ = fresh_state(s2)
    state = load_init(fresh, str(tmp_path / "w1"), stage=2, target_length=128, posemb="prefix")
    np.testing.assert_array_equal(state.queue, saved1["queue"])
    np.testing.assert_array_equal(state.queue_ids, saved1["queue_ids"])
    assert int(state.queue_ptr) == int(saved1["queue_ptr"]) and int(state.step) == 0
    for name, tree in (("params", state.params), ("batch_stats", state.batch_stats)):
        a, b = _flat(jax.device_get(tree)), _flat(saved1[name])
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}/{k}")
    for k, v in _flat(jax.device_get(state.ema_params)).items():
        np.testing.assert_array_equal(v, _flat(saved1["params"]["head"]["projector"])[k])


def test_logged_metrics_are_means_over_the_log_window(tmp_path, tiny_data):
    """log_every=3 logs the mean of the three steps' values that log_every=1 logs one by one."""
    rows = {}
    for every in (1, 3):
        config = load_config("test", "stage2")
        config.data.root = tiny_data
        config.train.update(total_steps=3, checkpoint_every=3, log_every=every)
        train_and_evaluate(config, str(tmp_path / f"w{every}"))
        rows[every] = [json.loads(line) for line in (tmp_path / f"w{every}" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows[1]] == [1, 2, 3] and [r["step"] for r in rows[3]] == [3]
    for key in ("loss", "grad_norm", "lam_mean"):
        want = np.mean([r[key] for r in rows[1]])
        np.testing.assert_allclose(rows[3][0][key], want, rtol=1e-6, err_msg=key)
    assert rows[3][0]["loss"] != rows[1][2]["loss"]  # not the last step's value


def test_periodic_fewshot_is_logged_beside_the_loss(tmp_path, tiny_data):
    config = load_config("test", "stage2")
    config.data.root = tiny_data
    config.train.update(total_steps=3, checkpoint_every=3, log_every=1)
    config.fewshot.update(every=2)
    config.fewshot.data.update(root=tiny_data, label="tiny", clip_seconds=1.5)
    train_and_evaluate(config, str(tmp_path / "w"))
    rows = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").open()]
    key = f"fewshot/tiny/{config.fewshot.ways}way{config.fewshot.shots}shot"
    assert [r["step"] for r in rows if key in r] == [2, 3]  # every 2 steps and at the end
    assert sorted(scalar_series(tmp_path / "w" / "tensorboard", key)) == [2, 3]
    # the value logged at the end is the saved encoder's: recomputed from the checkpoint on the same episodes
    from uamix_jax.evaluation.encoders import load_encoder
    from uamix_jax.evaluation.periodic import PeriodicFewShot

    encoder, variables = load_encoder(str(tmp_path / "w"))
    again = PeriodicFewShot.from_config(config, encoder)(variables["params"], 3)
    logged = [r for r in rows if key in r][-1]
    assert logged[key] == pytest.approx(again[key], abs=1e-9) and logged[key + "_ci95"] == pytest.approx(
        again[key + "_ci95"], abs=1e-9)
