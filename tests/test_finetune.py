"""Fine-tuning: layer-wise lr decay, weight-decay groups, mixup, losses against torch, the step on 1 and 8 devices,
evaluation logits, loading an AudioMAE checkpoint, multi-hot batches, the protocol's folds, and the demo end to end."""
from __future__ import annotations

import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import soundfile as sf
from flax import traverse_util

from tests.train_util import load_config, synthetic_batch
from uamix_jax.audio.augment import eval_view
from uamix_jax.audio.features import waveform_to_fbank
from uamix_jax.data.synthetic import synthesize_clip
from uamix_jax.data.layouts import read_dataset
from uamix_jax.data.manifest import read_manifest_csv
from uamix_jax.data.pipeline import make_pipeline
from uamix_jax.evaluation.embed import InputPolicy
from uamix_jax.evaluation.protocol import evaluation_runs, run_record
from uamix_jax.train import optim
from uamix_jax.models.vit import AudioMAEEncoder
from uamix_jax.schedules import lr_schedule
from uamix_jax.train.finetune import (
    finetune, finetune_groups, finetune_init, load_pretrained, make_logits_fn, options_from_config)
from uamix_jax.train.finetune_step import classification_loss, classifier_head, make_finetune_step, waveform_mixup
from uamix_jax.train.state import create_state
from uamix_jax.sharding import data_mesh, global_batch, replicate, shard_step


def _flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(tree)).items()}


def _tiny_config(**changes):
    c = load_config("finetune", "demo")
    c.model.target_length = 128
    c.train.update(global_batch=16, total_steps=4)
    for path, value in changes.items():
        node = c
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def _state(config, num_classes=4, total=10, warmup=0):
    config.optim.warmup_fraction = warmup / total
    encoder, head = AudioMAEEncoder.from_config(config.model, dtype=config.dtype), classifier_head(num_classes)
    groups = finetune_groups(config, encoder.depth)
    state, labels = create_state(config, finetune_init(encoder, head), groups, total, jax.random.key(0))
    return encoder, head, state, labels, groups.scales, lr_schedule(config.optim, config.train.global_batch, total)


# ----------------------------------------------------------------------------------------- optimizer groups
def test_layer_decay_scales_a_plain_sgd_update():
    """With SGD(lr)·scale per label, every leaf moves by exactly −lr·s·g: patch embedding and cls 0.75^(L+1), block i
    0.75^(L−i), fc_norm and head 1 (AudioMAE's 13 layers at L = 12; here L = 4)."""
    config = _tiny_config()
    encoder, head, state, _, _, _ = _state(config)
    depth = encoder.depth
    rules, scales = optim.finetune_rules(depth, 0.75)
    labels = optim.label_params(state.params, rules)
    tx = optax.partition({k: optax.chain(optax.sgd(0.1), optax.scale(s)) for k, s in scales.items()}, labels)
    x = jax.random.normal(jax.random.key(1), (2, 128, 128))

    def loss(params):
        emb = encoder.apply({"params": params["encoder"]}, x)[1]
        return jnp.sum(head.apply({"params": params["head"]}, emb) ** 2) + jnp.sum(emb ** 2)

    grads = jax.jit(jax.grad(loss))(state.params)
    updates, _ = tx.update(grads, tx.init(state.params), state.params)
    g, u = _flat(grads), _flat(updates)
    expect = {"encoder/patch_embed/": 0.75 ** (depth + 1), "encoder/cls_token": 0.75 ** (depth + 1),
              "encoder/fc_norm/": 1.0, "head/": 1.0}
    expect.update({f"encoder/blocks_{i}/": 0.75 ** (depth - i) for i in range(depth)})
    seen = set()
    for path in g:
        prefix = next(p for p in expect if path.startswith(p))
        seen.add(prefix)
        assert np.any(g[path] != 0), path
        np.testing.assert_allclose(u[path], -0.1 * expect[prefix] * g[path], rtol=1e-6, err_msg=path)
    assert seen == set(expect)


def test_adamw_decays_matrices_but_not_cls_biases_or_norms():
    """A zero-gradient AdamW step moves a parameter by −lr·s·wd·p exactly where weight decay applies: kernels of
    the patch embedding, blocks and head; the cls token, biases and LayerNorms stay put (AudioMAE's groups)."""
    config = _tiny_config(**{"optim.weight_decay": 0.05})
    _, _, state, _, scales, schedule = _state(config, warmup=0)
    lr = float(schedule(0))
    new = jax.jit(lambda st: st.apply_trainable_gradients(jax.tree.map(jnp.zeros_like, st.params)))(state)
    before, after = _flat(state.params), _flat(new.params)
    labels = _flat(optim.label_params(state.params, optim.finetune_rules(4, 0.75)[0]))
    decayed = 0
    for path, p in before.items():
        if p.ndim > 1 and not path.endswith("bias") and labels[path] != "cls_token":
            step = -lr * scales[str(labels[path])] * 0.05 * p  # relative size ≥ 0.75^5 · lr · wd ≈ 6e-5
            assert np.all(after[path] != p), path
            np.testing.assert_allclose(after[path], p + step, rtol=1e-6, atol=0, err_msg=path)
            decayed += 1
        else:
            np.testing.assert_array_equal(after[path], p, err_msg=path)
    assert decayed == 1 + 4 * 4 + 1  # patch kernel, 4 kernels per block, head kernel


def test_schedule_warms_up_then_cosine_to_min_lr():
    config = _tiny_config(**{"optim.base_lr": 0.256, "optim.min_lr": 1e-4})  # lr = 0.256 · 16 / 256 = 0.016
    *_, schedule = _state(config, total=20, warmup=4)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 2, 4, 12, 20)],
                               [0.0, 0.008, 0.016, 1e-4 + (0.016 - 1e-4) * 0.5, 1e-4], rtol=1e-5)


# ------------------------------------------------------------------------------------------ mixup and losses
def test_waveform_mixup_mixes_within_groups_with_matching_labels():
    rng = np.random.default_rng(0)
    b, n, g = 16, 400, 4
    wave = jnp.asarray(rng.standard_normal((b, n)), jnp.float32)
    length = jnp.asarray(rng.integers(200, n + 1, b), jnp.int32)
    targets = jnp.eye(b, dtype=jnp.float32)  # class i = clip i, so the targets name the partner and λ
    index = jnp.arange(100, 100 + b, dtype=jnp.int32)
    mixed, mixed_t = jax.jit(lambda k: waveform_mixup(k, wave, length, targets, index, prob=1.0, alpha=10.0,
                                                      group_size=g))(jax.random.key(3))
    mixed, mixed_t = np.asarray(mixed), np.asarray(mixed_t)
    np.testing.assert_allclose(mixed_t.sum(1), 1.0, atol=1e-6)
    for i in range(b):
        lam = mixed_t[i, i]
        partner = [j for j in np.flatnonzero(mixed_t[i] > 0) if j != i]
        assert len(partner) == 1 and partner[0] // g == i // g, f"clip {i} mixed outside its group: {partner}"
        j = partner[0]
        valid = np.arange(n) < int(length[i])
        want = lam * np.asarray(wave[i]) + (1 - lam) * np.where(valid, np.asarray(wave[j]), 0.0)
        np.testing.assert_allclose(mixed[i], want, atol=1e-5)
        np.testing.assert_allclose(mixed_t[i, j], 1 - lam, atol=1e-6)
    # prob 0.5 over many clips: about half mixed; λ ~ Beta(10, 10): mean 0.5, std 0.109
    n = 2000
    classes = jnp.eye(2)[jnp.arange(n) % 2]  # pairs (groups of 2) of the two classes: row i's own class weight is λ
    _, t = jax.jit(lambda k: waveform_mixup(k, jnp.zeros((n, 8)), jnp.full((n,), 8), classes,
                                            jnp.arange(n, dtype=jnp.int32), prob=0.5, alpha=10.0, group_size=2))(
        jax.random.key(4))
    lam = np.asarray(t)[np.arange(n), np.arange(n) % 2]
    mixed_rows = lam < 1.0
    assert abs(mixed_rows.mean() - 0.5) < 0.04  # ±3.6 σ
    assert abs(lam[mixed_rows].mean() - 0.5) < 0.012 and abs(lam[mixed_rows].std() - 0.109) < 0.01


def test_losses_match_torch():
    import torch

    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 5)).astype(np.float32) * 3
    multi = (rng.random((6, 5)) < 0.4).astype(np.float32) * rng.uniform(0.5, 1, (6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 6)
    with jax.default_matmul_precision("highest"):
        bce = classification_loss(jnp.asarray(logits), jnp.asarray(multi), multilabel=True, label_smoothing=0.1)
        ce = classification_loss(jnp.asarray(logits), jax.nn.one_hot(labels, 5), multilabel=False,
                                 label_smoothing=0.1)
    want_bce = torch.nn.BCEWithLogitsLoss()(torch.tensor(logits), torch.tensor(multi)).item()
    want_ce = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(torch.tensor(logits), torch.tensor(labels)).item()
    np.testing.assert_allclose(float(jnp.mean(bce)), want_bce, rtol=1e-6)
    np.testing.assert_allclose(float(jnp.mean(ce)), want_ce, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------- the step
def _run_step(config, devices, multilabel=False, n_steps=2):
    encoder, head, state, _, _, _ = _state(config)
    options = options_from_config(config, 4, multi_hot=False)
    mesh = data_mesh(devices)
    step = shard_step(make_finetune_step(encoder, head, options), mesh)
    state = replicate(state, mesh)
    losses = []
    for i in range(n_steps):
        batch = synthetic_batch(16, config.data.clip_seconds, seed=i)
        state, metrics = step(state, global_batch({k: batch[k] for k in options.batch_keys}, mesh), jax.random.key(7))
        losses.append(float(metrics["loss"]))
    return _flat(state.params), losses


def test_step_is_the_same_on_one_and_eight_devices():
    """Mixup (groups of 2), SpecAugment, gain, 2-D token masking and drop path all keyed by the global sample index."""
    config = _tiny_config(**{"finetune.mixup_prob": 0.5, "finetune.mix_group": 2, "model.drop_path": 0.2,
                             "data.clip_seconds": 1.5})
    with jax.default_matmul_precision("highest"):
        p1, l1 = _run_step(config, jax.devices()[:1])
        p8, l8 = _run_step(config, jax.devices())
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for k in p1:
        a, b = p8[k], p1[k]
        if k.endswith("qkv/bias"):  # the key bias has no gradient (softmax ignores it): Adam turns its rounding
            a, b = np.delete(a, np.s_[32:64]), np.delete(b, np.s_[32:64])  # noise into ±lr steps; skip it
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=k)
    assert l1[0] != l1[1]


def test_step_loss_without_augmentation_is_the_model_loss():
    """All augmentation off: the step's loss is the label-smoothed CE of head(encoder(eval input)) computed directly."""
    config = _tiny_config(**{"finetune.mixup_prob": 0.0, "model.drop_path": 0.0, "augment.gain_max": 0.0,
                             "augment.freq_mask": 0, "augment.time_mask": 0, "augment.mask_t_prob": 0.0,
                             "augment.mask_f_prob": 0.0, "data.clip_seconds": 1.0})
    encoder, head, state, _, _, _ = _state(config)
    batch = synthetic_batch(16, 1.0, seed=5)
    @jax.jit
    def direct_loss(params, waveform, length, label):
        fbank, n_valid = waveform_to_fbank(waveform, length)
        x = eval_view(fbank, n_valid, 128, config.data.stats)
        logits = head.apply({"params": params["head"]}, encoder.apply({"params": params["encoder"]}, x)[1])
        return jnp.mean(classification_loss(logits, jax.nn.one_hot(label, 4), multilabel=False, label_smoothing=0.1))

    with jax.default_matmul_precision("highest"):
        want = float(direct_loss(state.params, batch["waveform"], batch["length"], batch["label"]))
        _, losses = _run_step(config, jax.devices(), n_steps=1)
    np.testing.assert_allclose(losses[0], want, rtol=1e-5)


def test_window_logits_are_the_mean_of_the_window_logits():
    config = _tiny_config()
    encoder, head, state, _, _, _ = _state(config)
    policy = InputPolicy(target_length=128, crop="windows", clip_seconds=3.0)  # 298 frames: 3 windows of 128
    fn = make_logits_fn(encoder, head, policy)
    rng = np.random.default_rng(2)
    wave = (0.1 * rng.standard_normal((2, policy.clip_samples))).astype(np.float32)
    length = np.array([policy.clip_samples, policy.clip_samples], np.int32)
    logits = jax.jit(lambda p, x: head.apply({"params": p["head"]}, encoder.apply({"params": p["encoder"]}, x)[1]))
    with jax.default_matmul_precision("highest"):
        got = np.asarray(fn(state.params, wave, length))
        fbank, _ = jax.jit(waveform_to_fbank)(wave, length)
        stats = policy.mean_std()
        windows = [(fbank[:, w * 128:(w + 1) * 128] - stats[0]) / (2 * stats[1]) for w in range(2)]
        # the third window holds 298 - 256 = 42 < 64 real frames: left out of the mean, as embed.py does
        per_window = [logits(state.params, x) for x in windows]
    np.testing.assert_allclose(got, np.mean(per_window, axis=0), rtol=1e-5, atol=1e-6)


def test_init_from_audiomae_drops_norm_and_keeps_fc_norm_fresh(tmp_path):
    from uamix_jax.interop import torch_audiomae as ta

    model = ta.randomize_(ta.MaskedAutoencoderViT(width=32, depth=4, num_heads=2, mlp_dim=64, target_length=1024,
                                                  decoder_depth=1), seed=3).eval()
    ta.save_audiomae_checkpoint(model, tmp_path / "pretrained.pth")
    config = _tiny_config()
    encoder, _, state, _, _, _ = _state(config)
    loaded = load_pretrained(state, str(tmp_path / "pretrained.pth"), encoder)
    new, old = _flat(loaded.params), _flat(state.params)
    torch_sd = model.state_dict()
    np.testing.assert_allclose(new["encoder/blocks_2/mlp/fc1/kernel"], torch_sd["blocks.2.mlp.fc1.weight"].numpy().T)
    np.testing.assert_allclose(new["encoder/cls_token"], torch_sd["cls_token"].numpy())
    for k in ("encoder/fc_norm/scale", "encoder/fc_norm/bias", "head/kernel", "head/bias"):
        np.testing.assert_array_equal(new[k], old[k], err_msg=k)
    assert not any(k.startswith("encoder/norm/") for k in new)


# -------------------------------------------------------------------------------------------- data and folds
def test_pipeline_carries_multi_hot_labels_of_multi_label_sets(tmp_path):
    rows = ["path,label"]
    for i, labels in enumerate(["a;b", "b", "c;a;b", "c", "a"]):
        sf.write(tmp_path / f"{i}.wav", np.zeros(800, np.float32), 16000)
        rows.append(f"{i}.wav,{labels}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    manifest = read_manifest_csv(str(tmp_path))
    batches = list(make_pipeline(manifest, batch_size=4, clip_samples=800, seed=0, train=False, num_epochs=1,
                                 drop_remainder=False))
    for b in batches:
        valid = b["mask"]
        np.testing.assert_array_equal(b["multi_hot"][valid], manifest.multi_labels.dense(b["index"][valid]))
        assert not b["multi_hot"][~valid].any()
    assert batches[0]["multi_hot"][0].tolist() == [True, True, False]
    single = manifest.select(np.array([1, 3, 4]))  # one label per clip: not carried unless asked for
    assert "multi_hot" not in next(iter(make_pipeline(single, batch_size=2, clip_samples=800, seed=0, train=False)))
    forced = next(iter(make_pipeline(single, batch_size=2, clip_samples=800, seed=0, train=False, multi_hot=True)))
    np.testing.assert_array_equal(forced["multi_hot"], np.eye(3, dtype=bool)[forced["label"]])


def make_esc50_layout(root, clips_per_class_and_fold=2, folds=5):
    """A miniature ESC-50 (meta/esc50.csv + audio/): `folds` folds × 2 classes (low / high tone), 1 s clips."""
    os.makedirs(os.path.join(root, "meta"), exist_ok=True)
    os.makedirs(os.path.join(root, "audio"), exist_ok=True)
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, folds + 1):
        for target, name in enumerate(("low_tone", "high_tone")):
            for k in range(clips_per_class_and_fold):
                src = 1000 * fold + 10 * target + k
                fname = f"{fold}-{src}-A-{target}.wav"
                sf.write(os.path.join(root, "audio", fname),
                         synthesize_clip(name, np.random.default_rng(src), 1.0, 16000), 16000)
                lines.append(f"{fname},{fold},{target},{name},False,{src},A")
    with open(os.path.join(root, "meta", "esc50.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return root


def test_esc50_folds_are_disjoint_and_test_each_clip_once(tmp_path):
    manifest = read_dataset("esc50", make_esc50_layout(str(tmp_path)))
    runs = evaluation_runs(manifest, folds="all")
    assert [r.name for r in runs] == [f"fold_{k}" for k in range(1, 6)]
    tested = [c for r in runs for c in r.test.clip_ids]
    assert sorted(tested) == sorted(manifest.clip_ids) and len(set(tested)) == len(manifest)
    for r in runs:
        assert not set(r.train.clip_ids) & set(r.test.clip_ids)
        assert len(r.train) + len(r.test) == len(manifest)
        assert set(r.test.folds) == {int(r.name[-1])}
    assert [r.name for r in evaluation_runs(manifest, folds="2,4")] == ["fold_2", "fold_4"]
    with pytest.raises(ValueError, match="folds \\[7\\]"):
        evaluation_runs(manifest, folds="7")


def test_folder_without_splits_gets_a_seeded_stratified_split(tmp_path):
    for c in range(3):
        os.makedirs(tmp_path / f"c{c}")
        for k in range(10):
            sf.write(tmp_path / f"c{c}" / f"{k}.wav", np.zeros(800, np.float32), 16000)
    manifest = read_dataset("folder", str(tmp_path))
    (run,) = evaluation_runs(manifest, seed=3)
    assert len(run.test) == 6 and np.bincount(run.test.labels).tolist() == [2, 2, 2]
    assert not set(run.train.clip_ids) & set(run.test.clip_ids) and len(run.train) == 24
    assert evaluation_runs(manifest, seed=3)[0].test.clip_ids.tolist() == run.test.clip_ids.tolist()


def test_best_is_chosen_on_valid_when_there_is_one():
    rows = [{"epoch": 1, "test/accuracy": 0.5, "valid/accuracy": 0.7},
            {"epoch": 2, "test/accuracy": 0.9, "valid/accuracy": 0.6},
            {"epoch": 3, "test/accuracy": 0.6, "valid/accuracy": 0.7}]
    record = run_record(rows, "accuracy")
    assert (record["value"], record["best"], record["best_epoch"], record["selected_on"]) == (0.6, 0.5, 1, "valid")
    record = run_record([{k: v for k, v in r.items() if not k.startswith("valid")} for r in rows], "accuracy")
    assert (record["best"], record["best_epoch"]) == (0.9, 2)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_demo_preset_beats_chance_twice_over(tmp_path):
    """The demo preset (tiny ViT from scratch, synthetic 8 classes, 80/20 split), shortened to 12 epochs: test
    accuracy ≥ 2 × chance = 25 %; the result JSON and the summary row are written; a finished run resumes to it."""
    config = load_config("finetune", "demo")
    config.train.update(epochs=12)
    config.progress = False
    config.eval.every_epochs = 6.0
    record = finetune(config, str(tmp_path))
    assert record["metric"] == "accuracy" and record["value"] >= 2 / 8, record
    (result,) = os.listdir(tmp_path / "finetune")  # <dataset label>.json: the data folder's name for 'folder'
    saved = json.load(open(tmp_path / "finetune" / result))
    assert saved["value"] == record["value"] and saved["best_epoch"] in (6, 12) and saved["evaluations"] == 2
    assert saved["test_clips"] == 39 and saved["train_clips"] == 153
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows[-1]["accuracy/value"] == record["value"]
    assert json.load(open(tmp_path / "config.json"))["model"]["pooling"] == "fc_norm"
    again = finetune(copy.deepcopy(config), str(tmp_path))  # nothing left to train: same record, no new rows
    assert again["value"] == record["value"]
    assert len(open(tmp_path / "metrics.jsonl").readlines()) == len(rows)


@pytest.mark.slow
def test_esc50_folds_end_to_end(tmp_path):
    """The esc50 preset (--config.folds=all) on a miniature ESC-50 cut to 2 folds to save time (the 5-fold partition
    is checked above, and end to end by tests/test_linear_probe.py): one sub-workdir per fold, every clip tested
    once, mean and std over the folds, a summary row per fold."""
    root = make_esc50_layout(str(tmp_path / "esc"), clips_per_class_and_fold=4, folds=2)
    config = load_config("finetune", "esc50")
    config.model.update(size="test", target_length=96)
    config.data.update(root=root, clip_seconds=1.0, worker_count=0)
    config.train.update(total_steps=1, global_batch=8)
    config.progress = False
    config.eval.update(batch_size=8, clip_seconds=1.0)
    record = finetune(config, str(tmp_path / "w"))
    assert sorted(record["per_fold"]) == ["fold_1", "fold_2"]
    assert [r["test_clips"] for r in record["per_fold"].values()] == [8, 8]
    values = [r["value"] for r in record["per_fold"].values()]
    np.testing.assert_allclose([record["value"], record["std"]], [np.mean(values), np.std(values)])
    for k in (1, 2):
        assert os.path.isfile(tmp_path / "w" / f"fold_{k}" / "config.json")
    rows = [json.loads(line) for line in open(tmp_path / "w" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 2] and "accuracy/std" in rows[-1]


@pytest.mark.slow
def test_multilabel_manifest_trains_on_multi_hot_with_mixup(tmp_path):
    """An AudioSet-like CSV manifest (several labels per clip, train/test splits): BCE on the pipeline's multi_hot,
    waveform mixup, mAP on the test split."""
    rows = ["path,label,split"]
    names = ("low_tone", "high_tone", "click_train")
    for i in range(24):
        present = [n for k, n in enumerate(names) if (i >> k) & 1] or [names[0]]
        rng = np.random.default_rng(i)
        clip = sum(synthesize_clip(n, rng, 1.0, 16000) for n in present) / len(present)
        sf.write(tmp_path / f"{i}.wav", clip, 16000)
        rows.append(f"{i}.wav,{';'.join(present)},{'test' if i % 4 == 0 else 'train'}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    config = load_config("finetune", "audioset20k")
    config.model.update(size="test", target_length=96)
    config.data.update(name="manifest", root=str(tmp_path), train_split="train", test_split="test",
                       clip_seconds=1.0, worker_count=0)
    config.finetune.update(mix_group=2)
    config.train.update(total_steps=2, global_batch=16)
    config.progress = False
    config.eval.update(batch_size=8, clip_seconds=1.0)
    record = finetune(config, str(tmp_path / "w"))
    assert record["metric"] == "map" and 0.0 < record["value"] <= 1.0 and record["test_clips"] == 6
    row = [json.loads(line) for line in open(tmp_path / "w" / "metrics.jsonl")][-2]
    assert np.isfinite(row["loss"]) and "test/map" in row


@pytest.mark.parametrize("preset, frames, stats, metric", [
    ("audioset20k", 1024, "audioset", "map"), ("esc50", 512, "esc50", "accuracy"),
    ("speechcommands", 128, "speechcommands", "accuracy"), ("voxceleb1", 1024, "audioset", "accuracy"),
    ("demo", 128, "audioset", "accuracy")])
def test_presets_input_policy(preset, frames, stats, metric):
    from uamix_jax.evaluation.protocol import metric_name

    ft, lp = load_config("finetune", preset), load_config("linear_probe", preset)
    assert (ft.task, lp.task) == ("finetune", "linear_probe")
    assert ft.model.target_length == lp.model.target_length == frames
    assert ft.data.stats == lp.data.stats == stats
    assert metric_name(ft.finetune.multilabel) == metric_name(lp.probe.multilabel) == metric
    assert (ft.model.pooling, ft.model.posemb, ft.model.drop_path) == ("fc_norm", "audiomae", 0.1)
    assert ft.finetune.mixup_prob == (0.5 if preset == "audioset20k" else 0.0)
    if preset == "voxceleb1":  # random 1024-frame crops in training, mean logits over 1024-frame windows at test
        assert round(ft.data.clip_seconds * 16000) == (1024 - 1) * 160 + 400 and ft.data.crop == "windows"
    if preset == "esc50":
        assert ft.folds == lp.folds == "all"
    if preset == "speechcommands":
        assert ft.data.valid_split == "valid"
    plain = load_config("linear_probe", None)
    assert (plain.model.target_length, plain.data.stats) == (1024, "audioset")
