"""MAE pretraining: the step on 1 vs 8 devices, a tiny run that learns, and the workdir as the start of tuning."""
from __future__ import annotations

import json

import jax
import numpy as np
import optax
import pytest
from flax import traverse_util

from tests.train_util import load_config, synthetic_batch
from uamix_jax.schedules import peak_lr
from uamix_jax.train.pretrain import build_mae, pretrain_groups, pretrain_init, pretrain_options
from uamix_jax.train.pretrain_step import make_pretrain_step
from uamix_jax.train.state import create_state
from uamix_jax.sharding import data_mesh, global_batch, replicate, shard_step


def _flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(tree)).items()}


def _run(config, n_steps: int, devices=None, n_batches: int = 4):
    encoder, decoder = build_mae(config)
    state, _ = create_state(config, pretrain_init(encoder, decoder, config.mae.mask_ratio), pretrain_groups(config),
                            n_steps, jax.random.key(0))
    mesh = data_mesh(devices)
    step = shard_step(make_pretrain_step(encoder, decoder, pretrain_options(config)), mesh)
    state = replicate(state, mesh)
    g = config.train.global_batch
    batches = [synthetic_batch(g, config.data.clip_seconds, seed) for seed in range(n_batches)]
    losses = []
    for i in range(n_steps):
        data = global_batch({k: v for k, v in batches[i % n_batches].items() if k in ("waveform", "length")}, mesh)
        state, metrics = step(state, data, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    return state, losses


def test_pretrain_step_is_the_same_on_one_and_eight_devices(n_devices):
    """Same global batch, same step: loss, and every gradient (Adam's first moment after one step is 0.1·g)."""
    config = load_config("pretrain_mae", "test")
    one, loss_one = _run(config, 1, jax.devices()[:1])
    eight, loss_eight = _run(config, 1, jax.devices())
    assert n_devices == 8
    np.testing.assert_allclose(loss_eight, loss_one, rtol=1e-6)
    # Parameters are compared through the gradients: Adam's first step moves each by ≈ ±lr·sign(g), which turns
    # rounding noise on gradients that are zero in exact arithmetic (the key bias of attention) into ±lr.
    a, b = (_flat(optax.tree_utils.tree_get(s.opt_state, "mu")) for s in (one, eight))
    assert a.keys() == b.keys() and any(k.startswith("decoder/decoder_blocks_") for k in a)
    for k in a:
        scale = max(float(np.abs(a[k]).max()), 1e-12)
        np.testing.assert_allclose(b[k] / scale, a[k] / scale, atol=1e-4, err_msg=k)


def test_tiny_pretraining_learns_below_the_constant_prediction_floor():
    """Per-patch normalised targets have mean square (n − 1)/n ≈ 0.996, the loss of predicting a constant. 20 steps
    on 4 batches of the tiny model (peak lr 2e-3) must get 10 % under it and 25 % under the first step's loss."""
    config = load_config("pretrain_mae", "test")
    _, losses = _run(config, 20, jax.devices()[:1])
    assert np.all(np.isfinite(losses))
    final = float(np.mean(losses[-4:]))
    assert final < 0.9 * 255 / 256, losses
    assert final < 0.75 * losses[0], losses


@pytest.fixture(scope="module")
def pretrained_workdir(tmp_path_factory):
    from uamix_jax.data.synthetic import make_demo_dataset
    from uamix_jax.train.pretrain import pretrain

    base = tmp_path_factory.mktemp("mae")
    # nested folders: the 'unlabelled' layout reads every file below the root
    root = make_demo_dataset(base / "audio" / "nested", num_classes=2, clips_per_class=8, seconds=1.5,
                             odd_formats=False)
    config = load_config("pretrain_mae", "test")
    config.data.root = str(base / "audio")
    config.train.update(total_steps=3, checkpoint_every=3)
    state = pretrain(config, str(base / "w0"))
    del root
    return str(base / "w0"), jax.device_get(state)


@pytest.mark.slow
def test_pretraining_workdir_records_its_run(pretrained_workdir):
    workdir, state = pretrained_workdir
    with open(f"{workdir}/config.json", encoding="utf-8") as f:
        record = json.load(f)
    assert record["task"] == "pretrain" and record["data"]["name"] == "unlabelled"
    assert record["model"]["size"] == "test" and record["model"]["target_length"] == 128
    assert record["derived"]["total_steps"] == 3 and int(state.step) == 3
    assert record["derived"]["warmup_steps"] == 0 and record["derived"]["peak_lr"] == 2e-3  # round(0.1 · 3) = 0
    rows = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl", encoding="utf-8")]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)


@pytest.mark.slow
def test_pretraining_workdir_starts_stage1_and_loads_as_an_encoder(pretrained_workdir):
    from uamix_jax.evaluation.encoders import load_encoder
    from uamix_jax.interop.workdir import restore_state_dict
    from tests.train_util import fresh_state
    from uamix_jax.train.tune import load_init

    workdir, _ = pretrained_workdir
    saved = _flat(restore_state_dict(workdir)["params"]["encoder"])

    stage1 = load_config("test", "stage1")
    stage1.seed = 3
    _, _, fresh, _ = fresh_state(stage1)
    state = load_init(fresh, workdir, stage=1, target_length=128, posemb="prefix")
    got = _flat(state.params["encoder"])
    assert got.keys() == saved.keys()
    for k in saved:
        np.testing.assert_array_equal(got[k], saved[k], err_msg=k)

    encoder, variables = load_encoder(workdir)
    assert (encoder.width, encoder.depth, encoder.target_length, encoder.pooling) == (32, 4, 128, "norm_mean")
    loaded = _flat(variables["params"])
    for k in saved:
        np.testing.assert_array_equal(loaded[k], saved[k], err_msg=k)
    _, emb = encoder.apply(variables, np.zeros((1, 128, 128), np.float32))
    assert emb.shape == (1, 32) and np.all(np.isfinite(emb))


def test_pretrain_configs():
    for arg in (None, "demo", "cpu", "test"):
        c = load_config("pretrain_mae", arg)
        assert c.task == "pretrain" and c.mae.mask_ratio == 0.8 and c.mae.norm_pix_loss
        assert (c.optim.b1, c.optim.b2, c.optim.weight_decay) == (0.9, 0.95, 1e-4)
        assert c.decoder.width % 4 == 0 and c.decoder.width % c.decoder.num_heads == 0
    base = load_config("pretrain_mae")
    assert (base.model.size, base.model.target_length, base.train.global_batch) == ("base", 1024, 512)
    assert peak_lr(base.optim, base.train.global_batch) == 2e-4 * 512 / 256
    assert (base.augment.gain_min, base.augment.gain_max, base.augment.gain_beta) == (0.5, 1.5, 10.0)
    assert dict(base.decoder) == dict(width=512, depth=8, num_heads=16, mlp_dim=2048)
    assert load_config("pretrain_mae", "demo").data.synthetic
    with pytest.raises(ValueError, match="variant"):
        load_config("pretrain_mae", "nope")
