"""The training step: progressive freezing, layer-wise lr decay, device-count invariance, no retracing, bf16."""
from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tests.train_util import fresh_state, load_config, synthetic_batch
from uamix_jax.sharding import data_mesh, global_batch, replicate, shard_step
from uamix_jax.train import optim
from uamix_jax.train.state import create_state
from uamix_jax.train.tune import build_models, tune_groups, tune_init, tune_options
from uamix_jax.train.tune_step import make_tune_step


def _flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(tree)).items()}


def _run(config, n_steps: int, devices=None, seed: int = 0):
    encoder, head, state, labels = fresh_state(config)
    mesh = data_mesh(devices)
    step = shard_step(make_tune_step(encoder, head, tune_options(config, config.mix.group), optim.trainable_mask(labels)), mesh)
    state = replicate(state, mesh)
    start = _flat(state.params)
    key = jax.random.key(7)
    losses = []
    for i in range(n_steps):
        batch = global_batch(synthetic_batch(config.train.global_batch, config.data.clip_seconds, seed + i), mesh)
        state, metrics = step(state, batch, key)
        losses.append(float(metrics["loss"]))
    return start, state, losses


def test_stage1_freezes_every_encoder_parameter_bitwise():
    config = load_config("test", "stage1")
    start, state, losses = _run(config, 3)
    end = _flat(state.params)
    enc = [k for k in start if k.startswith("encoder/")]
    head = [k for k in start if k.startswith("head/")]
    assert enc and head
    for k in enc:
        np.testing.assert_array_equal(end[k], start[k], err_msg=k)
    changed = [k for k in head if not np.array_equal(end[k], start[k])]
    assert len(changed) == len(head), f"head leaves that did not move: {sorted(set(head) - set(changed))}"
    assert np.all(np.isfinite(losses))


def test_stage2_freezes_lower_half_and_trains_the_rest():
    config = load_config("test", "stage2")
    depth = 4
    start, state, _ = _run(config, 2)
    end = _flat(state.params)
    frozen = [k for k in start if k.startswith(("encoder/patch_embed", "encoder/cls_token"))
              or any(k.startswith(f"encoder/blocks_{i}/") for i in range(depth // 2))]
    trained = [k for k in start if k not in frozen]
    assert len(frozen) == 3 + 12 * (depth // 2)  # patch kernel+bias, cls, 12 tensors per block
    for k in frozen:
        np.testing.assert_array_equal(end[k], start[k], err_msg=k)
    for k in trained:
        assert not np.array_equal(end[k], start[k]), f"{k} should train in stage 2"


def test_stage2_layerwise_lr_scales_updates_by_decay_power():
    """First AdamW step with no weight decay: |Δθ| = s·lr₀·|g|/(|g|+ε) ≈ s·lr₀, so max|Δ| per block ∝ 0.65^(L−i)."""
    config = load_config("test", "stage2")
    config.optim.weight_decay = 0.0
    config.optim.head_weight_decay = 0.0
    start, state, _ = _run(config, 1)
    end = _flat(state.params)
    depth = 4

    def max_update(prefix):
        return max(np.max(np.abs(end[k] - start[k])) for k in start if k.startswith(prefix))

    norm = max_update("encoder/norm/")
    for i in range(depth // 2, depth):
        ratio = max_update(f"encoder/blocks_{i}/") / norm
        np.testing.assert_allclose(ratio, config.optim.layer_decay ** (depth - i), rtol=1e-3, err_msg=f"block {i}")
    np.testing.assert_allclose(max_update("head/") / norm, 1.0, rtol=1e-3)


def test_vit_base_stage2_trainable_count_matches_paper_tp(capsys):
    """The paper's Table 2 "#TP 50M": blocks 6-11 + final norm + the NNCLR head of ViT-B."""
    config = load_config("stage2")
    encoder, head = build_models(config)
    state, labels = create_state(config, tune_init(config, encoder, head), tune_groups(config, encoder.depth), 100,
                                 jax.random.key(0), abstract=True)  # shapes only: nothing of ViT-B is allocated
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state))
    params = state.params
    n_train = optim.count_params(params, optim.trainable_mask(labels))
    block = 4 * 768 + (768 * 2304 + 2304) + (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768)
    projector = 768 * 2048 + 2048 * 2048 + 2048 * 256 + 2 * (2048 + 2048 + 256)
    predictor = 256 * 4096 + 4096 * 256 + 2 * 4096
    assert n_train == 6 * block + 2 * 768 + projector + predictor
    with capsys.disabled():
        print(f"\nViT-B stage-2 trainable parameters: {n_train:,} (blocks 6-11 {6 * block:,}, norm 1,536, "
              f"head {projector + predictor:,}); the paper's #TP: 50M")
    assert 49e6 < n_train < 52e6


def test_sharded_step_equals_single_device_and_traces_once(n_devices):
    config = load_config("test", "stage2")
    assert 16 % (config.mix.group * 8) == 0  # the config's own group size fits every device count below
    # Some gradients are exactly zero in theory: the attention key bias (softmax is shift invariant) and the final
    # norm's bias (the projector's first BatchNorm removes any constant shift). Computed, they are float round-off,
    # which Adam with eps 1e-8 turns into ±lr steps of arbitrary sign. eps 1e-3 keeps this comparison about sharding.
    config.optim.eps = 1e-3
    results = {}
    for name, devices in (("8dev", jax.devices()), ("4dev", jax.devices()[:4]), ("1dev", jax.devices()[:1])):
        encoder, head, state, labels = fresh_state(config)
        mesh = data_mesh(devices)
        chex.clear_trace_counter()  # the two meshes trace the same source once each
        per_device = chex.assert_max_traces(make_tune_step(encoder, head, tune_options(config, config.mix.group), optim.trainable_mask(labels)), n=1)
        step = shard_step(per_device, mesh)
        state = replicate(state, mesh)
        losses = []
        for i in range(3):
            batch = global_batch(synthetic_batch(16, config.data.clip_seconds, i), mesh)
            state, metrics = step(state, batch, jax.random.key(3))
            losses.append(float(metrics["loss"]))
        results[name] = (losses, jax.device_get(state))
    l1, s1 = results["1dev"]
    for name in ("8dev", "4dev"):
        ln, sn = results[name]
        np.testing.assert_allclose(ln, l1, atol=1e-5, rtol=1e-5, err_msg=name)
        for tree in ("params", "batch_stats", "ema_params"):
            a, b = _flat(getattr(sn, tree)), _flat(getattr(s1, tree))
            for k in a:
                np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=1e-5, err_msg=f"{name} {tree}/{k}")
        np.testing.assert_allclose(sn.queue, s1.queue, atol=1e-5)
        np.testing.assert_array_equal(sn.queue_ids, s1.queue_ids)
        np.testing.assert_array_equal(sn.queue_ptr, s1.queue_ptr)


def test_mix_group_that_does_not_divide_the_per_device_batch_is_a_clear_error():
    config = load_config("test", "stage2")
    config.mix.group = 3
    encoder, head, state, labels = fresh_state(config)
    mesh = data_mesh(jax.devices()[:4])
    step = shard_step(make_tune_step(encoder, head, tune_options(config, config.mix.group), optim.trainable_mask(labels)), mesh)
    batch = global_batch(synthetic_batch(16, config.data.clip_seconds, 0), mesh)
    with pytest.raises(ValueError, match="group_size=3"):
        step(replicate(state, mesh), batch, jax.random.key(0))


def test_bfloat16_compute_keeps_float32_state():
    config = load_config("test", "stage2")
    config.dtype = "bfloat16"
    _, state, losses = _run(config, 2)
    assert np.all(np.isfinite(losses))
    for tree in (state.params, state.opt_state, state.batch_stats, state.ema_params):
        for leaf in jax.tree.leaves(tree):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert leaf.dtype == jnp.float32
    assert state.queue.dtype == jnp.float32


def test_label_rules_must_cover_every_parameter():
    params = {"encoder": {"blocks_0": {"w": np.zeros((2, 2))}, "odd": np.zeros(2)}, "head": {"w": np.zeros(2)}}
    with pytest.raises(ValueError, match="encoder/odd"):
        optim.label_params(params, [(r"encoder/blocks_\d+/.*", "x"), (r"head/.*", "head")])



def _all_reduced(stablehlo: str) -> list[tuple[int, str]]:
    """(elements, element type) of every operand of every all-reduce in a lowered program's StableHLO text."""
    out = []
    for types in re.findall(r'"stablehlo\.all_reduce".*?\}\) : \(([^)]*)\) ->', stablehlo, flags=re.S):
        for shape, dtype in re.findall(r"tensor<((?:\d+x)*)(\w+)>", types):
            out.append((int(np.prod([int(d) for d in shape.split("x") if d])), dtype))
    return out


@pytest.mark.parametrize("name,arg", [("test", "stage2"), ("pretrain_mae", "test"), ("finetune", "demo")])
def test_bfloat16_steps_sum_gradients_in_float32(name, arg):
    """Under dtype=bfloat16 every all-reduce of the tuning, pretraining and fine-tuning steps on 8 devices is float32
    (or a count): the trained parameters enter the loss as device-varying float32 values
    (`sharding.device_varying`), so the gradient psum that shard_map derives runs before the model's cast to
    bfloat16. Without it the tuning step sums 4,096-element weight gradients in bfloat16."""
    from uamix_jax.train.tpu_plan import lower_step

    config = load_config(name, arg)
    config.dtype = "bfloat16"
    lowered, _ = lower_step(config, data_mesh(jax.devices()[:8]), 16)
    reduced = _all_reduced(lowered.as_text())
    assert sum(n for n, dtype in reduced if dtype == "f32") > 10_000  # the gradients are among them
    assert {dtype for _, dtype in reduced} <= {"f32", "i32"}, sorted({d for _, d in reduced})
