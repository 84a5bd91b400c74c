"""bfloat16 compute agrees with float32 within stated tolerances: encoder embeddings and one stage-2 training step.

The float32 side runs at matmul precision 'highest' (true float32 on every backend). bf16 keeps 8 mantissa bits, a
relative rounding of 2⁻⁹ ≈ 2e-3 per value; the tolerances below are ~3× what was measured on CPU (see each test).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from tests.train_util import fresh_state, load_config, synthetic_batch
from uamix_jax.audio.features import audiomae_features
from uamix_jax.models.vit import AudioMAEEncoder
from uamix_jax.train import optim
from uamix_jax.train.tune import tune_options
from uamix_jax.sharding import data_mesh, global_batch, replicate, shard_step
from uamix_jax.train.tune_step import make_tune_step

T = 128  # configs/test.py's target_length


def _flat(tree):
    return {"/".join(k): np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(jax.device_get(tree)).items()}


def _rel(a, b):
    """‖a − b‖ / ‖b‖ over all values (b the float32 reference)."""
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b)))


def test_encoder_embeddings_bf16_vs_float32():
    """'test' ViT (random weights + N(0, 0.1²) so biases and LayerNorms are not trivial) on the fbanks of 16
    synthetic clips. Measured: relative error 3.5e-3, per-sample cosine ≥ 0.99999, mean error 2.6% of the
    spread of each feature across the clips (the quantity the head's BatchNorm and the loss see).
    Stated: relative ≤ 1e-2, cosine ≥ 0.9999, median error / spread ≤ 0.08."""
    batch = synthetic_batch(16, 1.5, seed=0)
    x = np.concatenate([np.asarray(audiomae_features(batch["waveform"][i:i + 1, :batch["length"][i]], target_length=T))
                        for i in range(16)])
    encoder = AudioMAEEncoder.from_size("test", target_length=T)
    variables = jax.jit(encoder.init)(jax.random.key(0), x[:1])
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    variables = jax.tree.unflatten(treedef, [v + 0.1 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)])
    with jax.default_matmul_precision("highest"):
        _, ref = jax.jit(encoder.apply)(variables, x)
    _, emb = jax.jit(encoder.clone(dtype=jnp.bfloat16).apply)(variables, x)
    ref, emb = np.asarray(ref, np.float64), np.asarray(emb, np.float64)
    assert emb.dtype == ref.dtype and 1e-4 < _rel(emb, ref) <= 1e-2  # bf16 really ran, and stayed close
    cosine = np.sum(emb * ref, 1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
    assert cosine.min() >= 0.9999
    assert np.median(np.abs(emb - ref).mean(0) / ref.std(0)) <= 0.08


def _one_step(dtype: str):
    """One stage-2 step of configs/test.py:stage2 from the same fresh state, with two changes that make the two
    dtypes comparable: SGD(lr = 1) as the optimizer, so the update is −gradient (AdamW's first update is
    ≈ −lr·sign(g), which flips with any rounding of a tiny component), and a queue whose rows are all one unit
    vector, so the nearest-neighbour look-up cannot flip between near-equal rows (a discrete choice no
    tolerance covers). Everything else — fbank, views, T-CutMix, encoder, head, EMA projector, soft NNCLR loss,
    queue update — is the project's step."""
    config = load_config("test", "stage2")
    config.dtype = dtype
    encoder, head, state, labels = fresh_state(config)
    sgd = optax.sgd(1.0)
    queue = np.zeros(state.queue.shape, np.float32)
    queue[:, 0] = 1.0
    state = state.replace(tx=sgd, opt_state=sgd.init(state.params), queue=jnp.asarray(queue))
    mesh = data_mesh()
    with jax.default_matmul_precision("highest"):
        step = shard_step(make_tune_step(encoder, head, tune_options(config, config.mix.group), optim.trainable_mask(labels)),
                                mesh, donate=False)
        batch = global_batch(synthetic_batch(config.train.global_batch, config.data.clip_seconds, seed=0), mesh)
        new, metrics = step(replicate(state, mesh), batch, jax.random.key(7))
    return _flat(state.params), new, {k: float(v) for k, v in metrics.items()}


def test_stage2_step_bf16_vs_float32():
    """Measured on CPU: loss 1e-3 relative, gradient norm 8e-3, update (= −gradient) cosine 0.96 and relative
    error 0.28 (0.32 in the encoder: a random-init encoder gives near-identical embeddings, 11% spread, which
    the head's BatchNorm scales up ~9×, rounding included), BatchNorm running statistics and new queue rows
    ≤ 4e-2. Stated: loss ≤ 1e-2, gradient norm ≤ 3e-2, update cosine ≥ 0.9 and relative ≤ 0.6, statistics and
    queue rows ≤ 0.1 relative; parameters, optimizer state, statistics and queue stay float32."""
    start, ref, m_ref = _one_step("float32")
    _, new, m = _one_step("bfloat16")
    assert abs(m["loss"] - m_ref["loss"]) <= 1e-2 * abs(m_ref["loss"])
    assert abs(m["grad_norm"] - m_ref["grad_norm"]) <= 3e-2 * m_ref["grad_norm"]
    p_ref, p = _flat(ref.params), _flat(new.params)
    d_ref = np.concatenate([(p_ref[k] - start[k]).ravel() for k in start])
    d = np.concatenate([(p[k] - start[k]).ravel() for k in start])
    assert (d_ref != 0).mean() > 0.5  # stage 2 trains the top half + head: most parameters moved
    frozen = {k for k in start if np.array_equal(p_ref[k], start[k])}
    assert frozen == {k for k in start if np.array_equal(p[k], start[k])}  # the same leaves frozen, bitwise
    assert d @ d_ref / np.linalg.norm(d) / np.linalg.norm(d_ref) >= 0.9 and _rel(d, d_ref) <= 0.6
    for kind in ("mean", "var"):  # joint over the head's BatchNorms: a zero-mean feature has no relative error
        s_ref, s = _flat(ref.batch_stats), _flat(new.batch_stats)
        keys = [k for k in s_ref if k.endswith(kind)]
        assert _rel(np.concatenate([s[k] for k in keys]), np.concatenate([s_ref[k] for k in keys])) <= 0.1, kind
    b = 16  # the new queue rows: the EMA projector's ẑ of the positive view
    assert _rel(np.asarray(new.queue)[:b], np.asarray(ref.queue)[:b]) <= 0.1
    for tree in (new.params, new.batch_stats, new.ema_params, new.queue):
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(tree))
