"""The Flax AudioMAE encoder: shapes, parameter names, init, pooling, precision modes, drop path, remat."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uamix_jax.models.posemb import positional_table
from uamix_jax.models.vit import VIT_SIZES, AudioMAEEncoder, make_encoder

T_SMALL = 64  # 4 time patches × 8 mel patches = 32 tokens: fast and still 2-D


def _fbank(batch, t=T_SMALL, seed=0):
    return jnp.asarray(0.5 * np.random.default_rng(seed).standard_normal((batch, t, 128)), jnp.float32)


def _paths(tree):
    return {"/".join(str(k.key) for k in path): leaf.shape
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def test_model():
    enc = AudioMAEEncoder.from_size("test", target_length=T_SMALL)
    variables = jax.jit(enc.init)(jax.random.key(0), _fbank(1))
    return enc, variables


@pytest.mark.parametrize("name", sorted(VIT_SIZES))
def test_every_size_shapes(name):
    width, depth, heads, mlp = VIT_SIZES[name]
    enc = AudioMAEEncoder.from_size(name, target_length=32)
    x = jax.ShapeDtypeStruct((2, 32, 128), jnp.float32)
    variables = jax.eval_shape(enc.init, jax.random.key(0), x)
    tokens, emb = jax.eval_shape(enc.apply, variables, x)
    assert (enc.width, enc.depth, enc.num_heads, enc.mlp_dim) == (width, depth, heads, mlp)
    assert tokens.shape == (2, 1 + 2 * 8, width) and emb.shape == (2, width)
    assert tokens.dtype == emb.dtype == jnp.float32
    params = _paths(variables["params"])
    assert params["patch_embed/proj/kernel"] == (16, 16, 1, width)
    assert params[f"blocks_{depth - 1}/attn/qkv/kernel"] == (width, 3 * width)
    assert params[f"blocks_{depth - 1}/mlp/fc1/kernel"] == (width, mlp)
    assert f"blocks_{depth}/norm1/scale" not in params


def test_sizes_table_matches_contract():
    assert VIT_SIZES == {"test": (32, 4, 2, 64), "mini": (192, 4, 3, 768), "tiny": (192, 12, 3, 768),
                         "small": (384, 12, 6, 1536), "base": (768, 12, 12, 3072), "large": (1024, 24, 16, 4096)}
    assert make_encoder("small", pooling="fc_norm").pooling == "fc_norm"
    with pytest.raises(ValueError, match="unknown ViT size 'huge'"):
        AudioMAEEncoder.from_size("huge")


def test_parameter_names_mirror_audiomae(test_model):
    _, variables = test_model
    assert set(variables) == {"params"}, "the positional table must not be a variable"
    d, m = 32, 64
    expected = {"patch_embed/proj/kernel": (16, 16, 1, d), "patch_embed/proj/bias": (d,), "cls_token": (1, 1, d),
                "norm/scale": (d,), "norm/bias": (d,)}
    for i in range(4):
        expected.update({
            f"blocks_{i}/norm1/scale": (d,), f"blocks_{i}/norm1/bias": (d,),
            f"blocks_{i}/attn/qkv/kernel": (d, 3 * d), f"blocks_{i}/attn/qkv/bias": (3 * d,),
            f"blocks_{i}/attn/proj/kernel": (d, d), f"blocks_{i}/attn/proj/bias": (d,),
            f"blocks_{i}/norm2/scale": (d,), f"blocks_{i}/norm2/bias": (d,),
            f"blocks_{i}/mlp/fc1/kernel": (d, m), f"blocks_{i}/mlp/fc1/bias": (m,),
            f"blocks_{i}/mlp/fc2/kernel": (m, d), f"blocks_{i}/mlp/fc2/bias": (d,)})
    assert _paths(variables["params"]) == expected
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


def test_fc_norm_pooling_has_fc_norm_not_norm():
    enc = AudioMAEEncoder.from_size("test", target_length=32, pooling="fc_norm")
    params = _paths(jax.eval_shape(enc.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 128), jnp.float32)))
    assert "params/fc_norm/scale" in params and not any(p.startswith("params/norm/") for p in params)


def test_base_parameter_count_matches_audiomae():
    # AudioMAE's README log: n_parameters = 85,659,407 for the fine-tuned ViT-B with a 527-way head and no
    # pos_embed (frozen). Without the head (768·527 + 527) that is the encoder with fc_norm, or with norm.
    expected = 85_659_407 - (768 * 527 + 527)
    for pooling in ("norm_mean", "fc_norm"):
        enc = AudioMAEEncoder.from_size("base", pooling=pooling)
        variables = jax.eval_shape(enc.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 1024, 128), jnp.float32))
        assert sum(math.prod(x.shape) for x in jax.tree.leaves(variables)) == expected


def test_init_like_mae():
    enc = AudioMAEEncoder.from_size("small", target_length=32, depth=1)
    params = jax.jit(enc.init)(jax.random.key(3), _fbank(1, 32))["params"]
    d = 384
    # patch conv initialised like a [256, D] linear: xavier bound sqrt(6 / (256 + D)), not conv-style fans
    bound = math.sqrt(6 / (256 + d))
    kernel = np.asarray(params["patch_embed"]["proj"]["kernel"])
    assert 0.97 * bound < np.abs(kernel).max() <= bound
    qkv = np.asarray(params["blocks_0"]["attn"]["qkv"]["kernel"])
    assert 0.97 * math.sqrt(6 / (d + 3 * d)) < np.abs(qkv).max() <= math.sqrt(6 / (d + 3 * d))
    assert abs(np.asarray(params["cls_token"]).std() - 0.02) < 0.004
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = "/".join(str(k.key) for k in path)
        if name.endswith("bias"):
            assert not np.asarray(leaf).any(), name
        if name.endswith("scale"):
            assert np.all(np.asarray(leaf) == 1.0), name


def test_norm_mean_pooling_and_fc_norm_pooling(test_model):
    enc, variables = test_model
    x = _fbank(3, seed=1)
    tokens, emb = jax.jit(enc.apply)(variables, x)
    assert tokens.shape == (3, 1 + 4 * 8, 32)
    # tokens come out of the final LayerNorm (scale 1, bias 0 at init): zero mean, unit variance per token
    np.testing.assert_allclose(np.asarray(tokens).mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(tokens).var(-1), 1, atol=1e-3)
    np.testing.assert_allclose(emb, np.asarray(tokens)[:, 1:].mean(1), atol=1e-6)

    ft = AudioMAEEncoder.from_size("test", target_length=T_SMALL, pooling="fc_norm")
    ft_vars = {"params": {k: v for k, v in variables["params"].items() if k != "norm"}}
    rng = np.random.default_rng(0)
    ft_vars["params"]["fc_norm"] = {"scale": jnp.asarray(rng.uniform(0.5, 1.5, 32), jnp.float32),
                                    "bias": jnp.asarray(rng.normal(size=32), jnp.float32)}
    raw, ft_emb = jax.jit(ft.apply)(ft_vars, x)
    # the same trunk: the normed tokens of the first model are LayerNorm(raw tokens)
    raw = np.asarray(raw, np.float64)
    normed = (raw - raw.mean(-1, keepdims=True)) / np.sqrt(raw.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(normed, tokens, atol=2e-5)
    pooled = raw[:, 1:].mean(1)
    expected = (pooled - pooled.mean(-1, keepdims=True)) / np.sqrt(pooled.var(-1, keepdims=True) + 1e-6)
    expected = expected * np.asarray(ft_vars["params"]["fc_norm"]["scale"]) + np.asarray(
        ft_vars["params"]["fc_norm"]["bias"])
    np.testing.assert_allclose(ft_emb, expected, atol=2e-5)


def test_numpy_oracle_forward(test_model):
    """A plain numpy forward of the same parameters (float64), written from the module docstring's equations."""
    enc, variables = test_model
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    x = np.asarray(_fbank(2, seed=5), np.float64)
    from scipy.special import erf

    def ln(v, q):
        return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-6) * q["scale"] + q["bias"]

    b, t, f = x.shape
    patches = x.reshape(b, t // 16, 16, f // 16, 16).transpose(0, 1, 3, 2, 4).reshape(b, -1, 256)
    z = patches @ p["patch_embed"]["proj"]["kernel"].reshape(256, 32) + p["patch_embed"]["proj"]["bias"]
    z = z + positional_table(32, T_SMALL)[1:]
    z = np.concatenate([np.broadcast_to(p["cls_token"], (b, 1, 32)), z], axis=1)
    for i in range(4):
        blk = p[f"blocks_{i}"]
        h = ln(z, blk["norm1"]) @ blk["attn"]["qkv"]["kernel"] + blk["attn"]["qkv"]["bias"]
        q, k, v = (h[..., s * 32:(s + 1) * 32].reshape(b, -1, 2, 16).transpose(0, 2, 1, 3) for s in range(3))
        a = q @ k.transpose(0, 1, 3, 2) / 4.0
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(b, -1, 32)
        z = z + o @ blk["attn"]["proj"]["kernel"] + blk["attn"]["proj"]["bias"]
        h = ln(z, blk["norm2"]) @ blk["mlp"]["fc1"]["kernel"] + blk["mlp"]["fc1"]["bias"]
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        z = z + h @ blk["mlp"]["fc2"]["kernel"] + blk["mlp"]["fc2"]["bias"]
    z = ln(z, p["norm"])
    tokens, emb = jax.jit(enc.apply)(variables, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(tokens, z, atol=2e-5)
    np.testing.assert_allclose(emb, z[:, 1:].mean(1), atol=2e-5)


def test_samples_are_independent_and_jit_matches_eager(test_model):
    enc, variables = test_model
    x = _fbank(4, seed=2)
    tokens, emb = jax.jit(enc.apply)(variables, x)
    one_tokens, one_emb = enc.apply(variables, x[2:3])
    np.testing.assert_allclose(one_tokens[0], tokens[2], atol=1e-5)
    np.testing.assert_allclose(one_emb[0], emb[2], atol=1e-5)


def test_input_shape_errors(test_model):
    enc, variables = test_model
    with pytest.raises(AssertionError, match=r"\(2, 128, 128\).*target_length=64, num_mel_bins=128"):
        enc.apply(variables, _fbank(2, t=128))
    with pytest.raises(AssertionError, match="expects fbank"):
        enc.apply(variables, _fbank(1)[0])
    with pytest.raises(ValueError, match="multiple of patch_size"):
        AudioMAEEncoder.from_size("test", target_length=100).init(jax.random.key(0), _fbank(1, t=100))
    with pytest.raises(ValueError, match="pooling must be one of"):
        AudioMAEEncoder.from_size("test", target_length=T_SMALL, pooling="cls").init(jax.random.key(0), _fbank(1))


def test_bfloat16_compute_float32_params_and_outputs(test_model):
    enc, variables = test_model
    x = _fbank(2, seed=3)
    ref_tokens, ref_emb = jax.jit(enc.apply)(variables, x)
    bf = enc.clone(dtype=jnp.bfloat16)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(bf.init(jax.random.key(0), x)))
    tokens, emb = jax.jit(bf.apply)(variables, x)
    assert tokens.dtype == emb.dtype == jnp.float32
    # bf16 has 8 mantissa bits: relative error ~1e-2, far from float32 agreement but close to the reference
    assert 1e-4 < float(jnp.abs(tokens - ref_tokens).max()) < 0.15
    assert float(jnp.abs(emb - ref_emb).max()) < 0.05
    jaxpr = str(jax.make_jaxpr(bf.apply)(variables, x))
    assert "bf16" in jaxpr and "dot_general" in jaxpr
    # the softmax runs on float32 logits
    assert "exp" in jaxpr and any("exp" in line and "f32[" in line for line in jaxpr.splitlines())


def test_drop_path_only_in_training():
    enc = AudioMAEEncoder.from_size("test", target_length=T_SMALL, drop_path_rate=0.5)
    x = _fbank(8, seed=4)
    variables = enc.init(jax.random.key(0), x)
    eval_out = jax.jit(enc.apply)(variables, x)[0]
    np.testing.assert_array_equal(eval_out, jax.jit(functools.partial(enc.apply, train=False))(variables, x)[0])
    plain = AudioMAEEncoder.from_size("test", target_length=T_SMALL)
    np.testing.assert_allclose(eval_out, jax.jit(plain.apply)(variables, x)[0], atol=1e-6)
    train = jax.jit(functools.partial(enc.apply, train=True))
    a = train(variables, x, rngs={"dropout": jax.random.key(1)})[0]
    b = train(variables, x, rngs={"dropout": jax.random.key(2)})[0]
    assert float(jnp.abs(a - b).max()) > 1e-3
    # per-sample drop: with 4 blocks at rates 0..0.5 and 8 samples, some samples differ from the eval output
    changed = np.abs(np.asarray(a) - np.asarray(eval_out)).max(axis=(1, 2)) > 1e-6
    assert changed.any()
    with pytest.raises(Exception, match="dropout"):
        enc.apply(variables, x, train=True)


def test_remat_same_values_and_gradients(test_model):
    enc, variables = test_model
    x = _fbank(2, seed=6)

    def loss(params, model):
        tokens, emb = model.apply({"params": params}, x)
        return jnp.sum(emb**2) + jnp.mean(tokens**3)

    g_plain = jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], enc)
    g_remat = jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], enc.clone(remat=True))
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    assert _paths(enc.clone(remat=True).init(jax.random.key(0), x)) == _paths(variables)


@pytest.mark.parametrize("posemb", ["prefix", "audiomae"])
def test_positional_policy_reaches_the_tokens(test_model, posemb):
    enc, variables = test_model
    zero = jax.tree.map(jnp.zeros_like, variables)
    # with every parameter zero the blocks add nothing and the patch conv gives 0, so z_L = [0; P[1:]] = P;
    # fc_norm pooling returns z_L without a final norm
    ft = enc.clone(pooling="fc_norm", posemb=posemb)
    params = {k: v for k, v in zero["params"].items() if k != "norm"}
    params["fc_norm"] = {"scale": jnp.ones(32), "bias": jnp.zeros(32)}
    tokens, _ = jax.jit(ft.apply)({"params": params}, _fbank(1))
    np.testing.assert_allclose(tokens[0], positional_table(32, T_SMALL, policy=posemb), atol=1e-6)


@pytest.mark.parametrize("setting, shown", [("default", "DEFAULT"), ("high", "HIGH"), ("highest", "HIGHEST")])
def test_matmul_precision_reaches_every_dot_of_the_lowered_encoder(test_model, setting, shown):
    """CPU computes float32 dots alike at every setting, so the check is on the lowered HLO: each dot_general
    carries the precision of the enclosing jax.default_matmul_precision (the config's `precision`)."""
    import re

    enc, variables = test_model
    for attention in ("einsum", "xla"):
        with jax.default_matmul_precision(setting):
            hlo = jax.jit(enc.clone(attention=attention).apply).lower(variables, _fbank(1)).as_text()
        found = re.findall(r"stablehlo\.dot_general.*?precision = \[(\w+), (\w+)\]", hlo)
        # patch proj + per block (qkv, 2 attention products, proj, fc1, fc2) = 1 + 6·depth dots, all marked
        assert len(found) == 1 + 6 * enc.depth == hlo.count("stablehlo.dot_general"), attention
        assert set(found) == {(shown, shown)}, (attention, set(found))


def test_attention_paths_agree_at_highest_precision(test_model):
    enc, variables = test_model
    x = _fbank(2, seed=8)
    with jax.default_matmul_precision("highest"):
        ref_tokens, ref_emb = jax.jit(enc.clone(attention="einsum").apply)(variables, x)
        tokens, emb = jax.jit(enc.clone(attention="xla").apply)(variables, x)
        np.testing.assert_allclose(tokens, ref_tokens, atol=1e-5, rtol=0)
        np.testing.assert_allclose(emb, ref_emb, atol=1e-5, rtol=0)
        # gradients too (the xla path is jax.nn.dot_product_attention's own VJP)
        grad = lambda a: jax.jit(jax.grad(  # noqa: E731
            lambda p: jnp.sum(enc.clone(attention=a).apply({"params": p}, x)[1] ** 2)))(variables["params"])
        for g_ref, g in zip(jax.tree.leaves(grad("einsum")), jax.tree.leaves(grad("xla"))):
            np.testing.assert_allclose(g, g_ref, atol=1e-5, rtol=1e-4)
    assert float(jnp.abs(ref_emb).max()) > 0.1  # not a degenerate comparison


def test_auto_attention_and_its_errors():
    from uamix_jax.models.vit import resolve_attention

    assert resolve_attention("auto", jnp.bfloat16, 64, 512, backend="gpu") == "cudnn"
    assert resolve_attention("auto", jnp.float32, 64, 512, backend="gpu") == "einsum"  # cuDNN has no float32 path
    assert resolve_attention("auto", jnp.bfloat16, 12, 512, backend="gpu") == "einsum"  # a head width it refuses
    assert resolve_attention("auto", jnp.bfloat16, 64, 513, backend="gpu") == "einsum"  # odd: AudioMAE's 1 + T/2
    assert resolve_attention("auto", jnp.bfloat16, 64, 512, backend="cpu") == "einsum"
    assert resolve_attention("auto", jnp.bfloat16, 64, 512) == ("cudnn" if jax.default_backend() == "gpu" else "einsum")
    assert resolve_attention("xla", jnp.float32, 64, 513) == "xla"
    with pytest.raises(ValueError, match=r"must be one of \('auto', 'einsum', 'xla', 'cudnn'\), got 'flash'"):
        resolve_attention("flash", jnp.float32, 64, 513)
    with pytest.raises(ValueError, match="attention='cudnn' needs a bfloat16 or float16 compute dtype"):
        AudioMAEEncoder.from_size("test", target_length=T_SMALL, attention="cudnn").init(jax.random.key(0),
                                                                                          _fbank(1))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN fused attention needs a GPU")
def test_cudnn_attention_agrees_with_einsum_in_bfloat16():
    enc = AudioMAEEncoder.from_size("tiny", target_length=T_SMALL, dtype=jnp.bfloat16)  # head width 64
    x = _fbank(2, seed=9)
    variables = jax.jit(enc.init)(jax.random.key(0), x)
    _, ref = jax.jit(enc.clone(attention="einsum").apply)(variables, x)
    _, emb = jax.jit(enc.clone(attention="cudnn").apply)(variables, x)
    # both bf16 compute with float32 softmax: they differ by bf16 rounding of the products only
    assert float(jnp.abs(emb - ref).max()) < 0.05
