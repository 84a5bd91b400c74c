"""Linear probe: BatchNorm without affine + linear layer on cached embeddings; separable data, multi-label mAP, the
demo preset end to end (≥ 2 × chance), ESC-50 folds, the embedding cache reused."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_finetune import make_esc50_layout
from tests.train_util import load_config
from uamix_jax.evaluation.linear_probe import LinearProbe, run_linear_probe, train_probe


def _clusters(n_per_class, num_classes, dim, seed, offset=5.0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, dim))
    labels = np.repeat(np.arange(num_classes), n_per_class)
    # a large common offset and scale: the BatchNorm must standardise before the linear layer can work
    x = offset + 3.0 * (centres[labels] + 0.5 * rng.standard_normal((labels.size, dim)))
    return x.astype(np.float32), labels.astype(np.int32)


def test_probe_has_no_affine_batchnorm():
    variables = LinearProbe(3).init(jax.random.key(0), jnp.zeros((2, 8)))
    assert set(variables["params"]) == {"head"}  # BatchNorm without scale and bias
    assert set(variables["batch_stats"]["bn"]) == {"mean", "var"}
    # at test time the BN uses running statistics: (x − mean) / sqrt(var + 1e-6), then the linear layer
    stats = {"bn": {"mean": jnp.full((8,), 2.0), "var": jnp.full((8,), 4.0)}}
    x = jnp.arange(16.0).reshape(2, 8)
    out = LinearProbe(3).apply({"params": variables["params"], "batch_stats": stats}, x)
    head = variables["params"]["head"]
    np.testing.assert_allclose(out, ((x - 2.0) / np.sqrt(4.0 + 1e-6)) @ head["kernel"] + head["bias"], rtol=1e-5)


def _optim(base_lr, warmup_fraction):
    """The probe's optim block (configs/linear_probe.py) with another base rate and warmup."""
    optim = load_config("linear_probe").optim
    optim.update(base_lr=base_lr, warmup_fraction=warmup_fraction)
    return optim


def test_probe_separates_clusters():
    x, y = _clusters(40, 5, 16, seed=0)
    xt, yt = _clusters(10, 5, 16, seed=0)
    history = train_probe(x, y, xt, yt, num_classes=5, multilabel=False, epochs=15, batch_size=32,
                          optim=_optim(0.08, 1 / 15), seed=0)
    assert len(history) == 15 and history[-1]["test/accuracy"] >= 0.9
    assert history[0]["test/accuracy"] < history[-1]["test/accuracy"] or history[0]["test/accuracy"] >= 0.9


def test_probe_multilabel_map():
    """Two independent binary attributes per clip, each set by the sign of one embedding direction: mAP ≥ 0.9."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 12)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0, x[:, 3] > 0.5], axis=1)
    history = train_probe(x[:300], y[:300], x[300:], y[300:], num_classes=3, multilabel=True, epochs=20,
                          batch_size=50, optim=_optim(0.1, 1 / 20), seed=0)
    assert history[-1]["test/map"] >= 0.9


@pytest.mark.slow
def test_demo_preset_beats_chance_twice_over_and_reuses_the_cache(tmp_path):
    config = load_config("linear_probe", "demo")
    config.progress = False
    record = run_linear_probe(config, str(tmp_path))
    assert record["metric"] == "accuracy" and record["value"] >= 2 / 8, record  # 8 synthetic classes
    assert record["train_clips"] + record["test_clips"] == 8 * 24
    (name,) = os.listdir(tmp_path / "linear_probe")
    assert json.load(open(tmp_path / "linear_probe" / name))["value"] == record["value"]
    cache = record["embeddings"]
    stamp = os.stat(cache).st_mtime_ns
    again = run_linear_probe(config, str(tmp_path))
    assert again["value"] == record["value"] and os.stat(cache).st_mtime_ns == stamp


@pytest.mark.slow
def test_esc50_folds(tmp_path):
    root = make_esc50_layout(str(tmp_path / "esc"))
    config = load_config("linear_probe", "esc50")
    config.model.update(size="test", target_length=96)
    config.data.root = root
    config.data.update(clip_seconds=1.0, worker_count=0)
    config.progress = False
    config.train.update(epochs=3, global_batch=8)
    record = run_linear_probe(config, str(tmp_path / "w"))
    assert sorted(record["per_fold"]) == [f"fold_{k}" for k in range(1, 6)]
    assert sum(r["test_clips"] for r in record["per_fold"].values()) == 20
    values = [r["value"] for r in record["per_fold"].values()]
    np.testing.assert_allclose([record["value"], record["std"]], [np.mean(values), np.std(values)])
