"""MAE pieces: masking counts and device invariance, patchify convention, norm_pix loss, parity with PyTorch."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import PartitionSpec as P

from uamix_jax.interop.torch_io import CheckpointError
from uamix_jax.models.mae import MAEDecoder, num_keep, patchify, random_masking, unpatchify
from uamix_jax.models.vit import AudioMAEEncoder, PatchProj
from uamix_jax.objectives.mae import mae_loss, normalized_patches
from uamix_jax.sharding import AXIS, data_mesh

T, N = 128, 64  # the tiny test geometry: 8 x 8 patches


def _x(batch: int, seed: int = 0) -> np.ndarray:
    return (0.7 * np.random.default_rng(seed).standard_normal((batch, T, 128))).astype(np.float32)


def test_num_keep_is_audiomaes_count():
    assert num_keep(512) == 102 == int(0.2 * 512)  # ViT-B at T = 1024
    assert num_keep(64) == 12 == int(0.2 * 64)
    assert num_keep(40) == 7  # int(40 · (1 − 0.8)) = int(7.999…): AudioMAE's float arithmetic, kept as is
    with pytest.raises(ValueError, match="keeps no token"):
        num_keep(4)


def test_random_masking_keeps_exactly_n_keep_distinct_tokens_per_clip_different_per_clip_and_step():
    keep_n = num_keep(N)
    index = jnp.arange(16, dtype=jnp.int32)
    masking = jax.jit(random_masking, static_argnums=(2, 3))
    keep, mask = masking(jax.random.key(3), index, N, keep_n)
    keep, mask = np.asarray(keep), np.asarray(mask)
    chex.assert_shape([keep, mask], [(16, keep_n), (16, N)])
    for b in range(16):
        assert len(set(keep[b].tolist())) == keep_n and keep[b].min() >= 0 and keep[b].max() < N
        np.testing.assert_array_equal(mask[b, keep[b]], 0.0)
        assert mask[b].sum() == N - keep_n
        assert set(np.flatnonzero(mask[b] == 0).tolist()) == set(keep[b].tolist())
    assert len({tuple(sorted(k)) for k in keep.tolist()}) == 16  # every clip its own draw
    other_step, _ = masking(jax.random.fold_in(jax.random.key(3), 1), index, N, keep_n)
    assert all(set(a) != set(b) for a, b in zip(keep.tolist(), np.asarray(other_step).tolist()))
    # the draw follows the clip's global index, not its row
    shifted, _ = masking(jax.random.key(3), index[::-1], N, keep_n)
    np.testing.assert_array_equal(np.asarray(shifted)[::-1], keep)


def test_masks_are_the_same_on_one_and_eight_devices(n_devices):
    keep_n, batch = num_keep(N), 16

    def per_device(rows):  # rows: this device's share of the global batch (its values are unused)
        b = rows.shape[0]
        gidx = jax.lax.axis_index(AXIS) * b + jnp.arange(b, dtype=jnp.int32)
        return random_masking(jax.random.key(11), gidx, N, keep_n)

    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = data_mesh(devices)
        fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P(AXIS), out_specs=(P(AXIS), P(AXIS))))
        results.append(jax.device_get(fn(jnp.zeros((batch,)))))
    assert len(jax.devices()) == n_devices == 8
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_patchify_is_the_patch_conv_order_and_audiomaes_convention():
    x = _x(2)
    patches = np.asarray(patchify(jnp.asarray(x)))
    # token n = 8 t + f, pixel j = 16 a + b holds x[16 t + a, 16 f + b] (time-major inside the patch)
    for t, f, a, b in [(0, 0, 0, 0), (3, 5, 7, 2), (7, 7, 15, 15), (2, 1, 0, 9)]:
        assert patches[1, 8 * t + f, 16 * a + b] == x[1, 16 * t + a, 16 * f + b]
    np.testing.assert_array_equal(np.asarray(unpatchify(jnp.asarray(patches), T)), x)
    proj = PatchProj(24)
    variables = proj.init(jax.random.key(0), jnp.asarray(x))
    kernel, bias = (np.asarray(variables["params"][k], np.float64) for k in ("kernel", "bias"))
    want = patches.astype(np.float64) @ kernel.reshape(256, 24) + bias
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(np.asarray(proj.apply(variables, jnp.asarray(x))), want, atol=1e-5)


def test_norm_pix_targets_match_a_numpy_oracle():
    p = np.random.default_rng(1).normal(3.0, 2.0, (2, 5, 256)).astype(np.float32)
    p[0, 0] = 1.5  # a constant patch: var 0, so (x − μ)/√1e-6 = 0
    mean = p.astype(np.float64).mean(-1, keepdims=True)
    var = p.astype(np.float64).var(-1, ddof=1, keepdims=True)  # torch's .var() is unbiased
    want = (p - mean) / np.sqrt(var + 1e-6)
    got = np.asarray(normalized_patches(jnp.asarray(p)))
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_array_equal(got[0, 0], 0.0)
    biased = (p - mean) / np.sqrt(p.astype(np.float64).var(-1, keepdims=True) + 1e-6)
    assert np.abs(got - biased).max() > 1e-3  # the ddof matters at 256 values, so the oracle can tell


def test_loss_covers_masked_patches_only():
    rng = np.random.default_rng(2)
    pred = rng.standard_normal((2, N, 256)).astype(np.float32)
    target = rng.standard_normal((2, N, 256)).astype(np.float32)
    keep, mask = random_masking(jax.random.key(0), jnp.arange(2), N, num_keep(N))
    mask = np.asarray(mask)
    loss = float(mae_loss(pred, target, mask))
    t_hat = np.asarray(normalized_patches(jnp.asarray(target)), np.float64)
    per_patch = ((pred - t_hat) ** 2).mean(-1)
    np.testing.assert_allclose(loss, (per_patch * mask).sum() / mask.sum(), rtol=1e-6)
    visible = int(np.asarray(keep)[1, 0])
    changed = target.copy()
    changed[1, visible] += 5.0 * rng.standard_normal(256).astype(np.float32)
    assert float(mae_loss(pred, changed, mask)) == loss  # a visible patch's target does not count
    hidden = int(np.flatnonzero(mask[1])[0])
    changed = target.copy()
    changed[1, hidden] += 5.0 * rng.standard_normal(256).astype(np.float32)
    assert abs(float(mae_loss(pred, changed, mask)) - loss) > 1e-3
    raw = float(mae_loss(pred, target, mask, norm_pix=False))
    np.testing.assert_allclose(raw, ((((pred - target) ** 2).mean(-1)) * mask).sum() / mask.sum(), rtol=1e-6)


def test_loss_is_the_global_mean_over_devices(n_devices):
    """Devices hold different numbers of masked patches: the loss is Σ/Σ over all, not the mean of device means."""
    rng = np.random.default_rng(3)
    pred = rng.standard_normal((16, 8, 256)).astype(np.float32)
    target = rng.standard_normal((16, 8, 256)).astype(np.float32)
    mask = (rng.uniform(size=(16, 8)) < np.linspace(0.1, 0.9, 16)[:, None]).astype(np.float32)
    mask[:, 0] = 1.0
    want = float(mae_loss(pred, target, mask))
    mesh = data_mesh()
    fn = jax.jit(jax.shard_map(lambda p, t, m: mae_loss(p, t, m, axis_name=AXIS), mesh=mesh,
                               in_specs=(P(AXIS), P(AXIS), P(AXIS)), out_specs=P()))
    np.testing.assert_allclose(float(fn(pred, target, mask)), want, rtol=1e-6)
    device_means = [float(mae_loss(pred[i:i + 2], target[i:i + 2], mask[i:i + 2])) for i in range(0, 16, 2)]
    assert abs(np.mean(device_means) - want) > 1e-3


# ------------------------------------------------------------------------------------------------ torch parity
def _flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def test_flax_pretraining_forward_and_gradients_match_the_torch_reference():
    torch = pytest.importorskip("torch")
    from uamix_jax.interop.export import flax_to_torch
    from uamix_jax.interop.mae_keys import mae_params_from_state_dict
    from uamix_jax.interop.torch_audiomae import randomize_
    from uamix_jax.interop.torch_mae import PlainMaskedAutoencoderViT

    dims = dict(width=32, depth=2, num_heads=2, mlp_dim=64, target_length=T)
    dec = dict(width=48, depth=2, num_heads=3, mlp_dim=96)
    model = PlainMaskedAutoencoderViT(**dims, decoder_width=dec["width"], decoder_depth=dec["depth"],
                                      decoder_num_heads=dec["num_heads"], decoder_mlp_dim=dec["mlp_dim"])
    randomize_(model, seed=4)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    # the encoder's table at T = 128 is AudioMAE's (8, 8) grid: policy 'audiomae' for both tables
    params, info = mae_params_from_state_dict(state, posemb="audiomae", num_heads=2)
    assert info["target_length"] == T and info["format"] == "pretrained"
    # the exporter's Flax → torch names invert the decoder mapping exactly
    exported = flax_to_torch(params["decoder"])
    assert set(exported) == {k for k in state if k.startswith("decoder_") or k == "mask_token"} - {"decoder_pos_embed"}
    for k, v in exported.items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)

    encoder = AudioMAEEncoder(**dims, posemb="audiomae")
    decoder = MAEDecoder(**dec, target_length=T, posemb="audiomae")
    x = _x(3, seed=5)
    keep, mask = random_masking(jax.random.key(6), jnp.arange(3), N, num_keep(N))

    def loss_fn(p):
        tokens, _ = encoder.apply({"params": p["encoder"]}, jnp.asarray(x), keep=keep)
        pred = decoder.apply({"params": p["decoder"]}, tokens, keep)
        return mae_loss(pred, patchify(jnp.asarray(x)), mask), pred

    with jax.default_matmul_precision("highest"):
        (loss, pred), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)

    ref_loss, ref_pred, ref_mask = model(torch.from_numpy(x), ids_keep=torch.from_numpy(np.asarray(keep, np.int64)))
    np.testing.assert_array_equal(ref_mask.numpy(), np.asarray(mask))
    np.testing.assert_allclose(np.asarray(pred), ref_pred.detach().numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(float(loss), float(ref_loss.detach()), atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(patchify(jnp.asarray(x))), model.patchify(torch.from_numpy(x)).numpy())

    ref_loss.backward()
    ref_grads = {k: (p.grad.numpy() if p.grad is not None else state[k]) for k, p in model.named_parameters()}
    ref_grads = {**state, **ref_grads}  # pos tables (no gradient) as stored, so the mapping's checks pass
    ref_tree, _ = mae_params_from_state_dict(ref_grads, posemb="audiomae", num_heads=2)
    got, want = _flat(jax.device_get(grads)), _flat(ref_tree)
    assert set(got) == set(want)
    for k in want:
        scale = max(float(np.abs(want[k]).max()), 1e-3)
        np.testing.assert_allclose(got[k] / scale, want[k] / scale, atol=2e-4, err_msg=k)


def test_decoder_mapping_rejects_the_swin_decoder_and_wrong_shapes():
    torch = pytest.importorskip("torch")
    from uamix_jax.interop.mae_keys import decoder_params_from_state_dict
    from uamix_jax.interop.torch_audiomae import MaskedAutoencoderViT
    from uamix_jax.interop.torch_mae import PlainMaskedAutoencoderViT

    swin = MaskedAutoencoderViT(width=32, depth=1, num_heads=2, mlp_dim=64, target_length=T, decoder_width=32,
                                decoder_depth=1, decoder_num_heads=2)
    with pytest.raises(CheckpointError, match="Swin decoder"):
        decoder_params_from_state_dict(swin.state_dict(), target_length=T, posemb="audiomae")
    plain = {k: v.numpy() for k, v in PlainMaskedAutoencoderViT(
        width=32, depth=1, num_heads=2, mlp_dim=64, target_length=T, decoder_width=32, decoder_depth=1,
        decoder_num_heads=2, decoder_mlp_dim=64).state_dict().items()}
    decoder_params_from_state_dict(plain, target_length=T, posemb="audiomae")  # fits
    bad = dict(plain, **{"decoder_pred.weight": np.zeros((255, 32), np.float32)})
    with pytest.raises(CheckpointError, match="decoder_pred.weight expected"):
        decoder_params_from_state_dict(bad, target_length=T, posemb="audiomae")
    with pytest.raises(CheckpointError, match="decoder_pos_embed"):  # built on another grid than the one asked for
        decoder_params_from_state_dict(plain, target_length=T, posemb="prefix")
    del torch
