"""AudioMAE checkpoint conversion: parity with the PyTorch reference, safe loading, error messages, the CLI."""
import argparse
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from uamix_jax.interop import torch_audiomae as ta  # noqa: E402
from uamix_jax.interop.audiomae import (  # noqa: E402
    CheckpointError, convert_state_dict, load_audiomae, load_converted, save_converted)
from uamix_jax.interop.torch_io import load_pth  # noqa: E402
from uamix_jax.models.posemb import positional_table  # noqa: E402
from uamix_jax.models.vit import VIT_SIZES  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4  # the float32 parity bound


def _dims(size, target_length):
    width, depth, heads, mlp = VIT_SIZES[size]
    return dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp, target_length=target_length)


def _model(fmt, size, target_length, seed=0):
    if fmt == "pretrained":
        # a 2-block Swin decoder keeps the file small; its keys are those of the released 16-block one
        model = ta.MaskedAutoencoderViT(**_dims(size, target_length), decoder_depth=2)
    else:
        model = ta.VisionTransformer(**_dims(size, target_length), num_classes=527)
    return ta.randomize_(model, seed=seed).eval()


def _fbank(batch, target_length, seed=0):
    return (0.5 * np.random.default_rng(seed).standard_normal((batch, target_length, 128))).astype(np.float32)


def _parity(model, path, target_length, batch, posemb):
    encoder, variables = load_audiomae(path, target_length=target_length, posemb=posemb)
    x = _fbank(batch, target_length, seed=1)
    with torch.no_grad():
        ref_tokens, ref_emb = (t.numpy() for t in model(torch.from_numpy(x)))
    with jax.default_matmul_precision("highest"):  # float32 oracle: true float32 matmuls on every backend
        tokens, emb = (np.asarray(a) for a in jax.jit(encoder.apply)(variables, jnp.asarray(x)))
    assert tokens.shape == ref_tokens.shape == (batch, 1 + 8 * target_length // 16, encoder.width)
    assert emb.shape == ref_emb.shape == (batch, encoder.width)
    assert np.abs(ref_emb).max() > 0.1, "degenerate reference output"
    return float(np.abs(tokens - ref_tokens).max()), float(np.abs(emb - ref_emb).max())


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pretrained", "finetuned"])
@pytest.mark.parametrize("size, target_length, batch, posemb", [("base", 1024, 1, "prefix"),
                                                                 ("small", 512, 2, "audiomae")])
def test_parity_with_torch_reference(tmp_path, fmt, size, target_length, batch, posemb):
    model = _model(fmt, size, target_length)
    path = tmp_path / f"{fmt}.pth"
    ta.save_audiomae_checkpoint(model, path, optimizer_step=(size != "base"))
    d_tokens, d_emb = _parity(model, path, target_length, batch, posemb)
    assert d_tokens <= TOL and d_emb <= TOL, (d_tokens, d_emb)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """'test'-size models at T = 256 in both formats, wrapped like save_model and bare."""
    root = tmp_path_factory.mktemp("ckpt")
    files = {}
    for fmt in ("pretrained", "finetuned"):
        model = _model(fmt, "test", 256, seed=7)
        files[fmt] = (model, root / f"{fmt}.pth")
        ta.save_audiomae_checkpoint(model, files[fmt][1], optimizer_step=True)
        files[fmt + "_bare"] = (model, root / f"{fmt}_bare.pth")
        ta.save_audiomae_checkpoint(model, files[fmt + "_bare"][1], wrap=False)
    return files


@pytest.mark.parametrize("name", ["pretrained", "finetuned", "pretrained_bare", "finetuned_bare"])
def test_tiny_parity_wrapped_and_bare(tiny_files, name):
    model, path = tiny_files[name]
    d_tokens, d_emb = _parity(model, path, 256, 2, "audiomae")
    assert d_tokens <= TOL and d_emb <= TOL


def test_real_save_model_layout_loads_safely(tiny_files):
    _, path = tiny_files["pretrained"]
    raw = torch.load(path, weights_only=False)  # test-only peek at what we wrote (we wrote it ourselves)
    assert set(raw) == {"model", "optimizer", "epoch", "scaler", "args"}
    assert isinstance(raw["args"], argparse.Namespace) and raw["optimizer"]["state"]
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)  # why the allow-list is needed
    state = load_pth(path)
    assert set(state) == set(raw["model"]) and all(isinstance(v, np.ndarray) for v in state.values())
    np.testing.assert_array_equal(state["blocks.1.mlp.fc1.weight"], raw["model"]["blocks.1.mlp.fc1.weight"].numpy())


def test_numpy_values_in_args_are_allowed(tmp_path):
    model = _model("finetuned", "test", 256)
    ckpt = ta.audiomae_checkpoint(model)
    ckpt["args"].lr = np.float64(1.25e-4)  # an lr computed with numpy ends up as a numpy scalar in args
    ckpt["args"].dtype = np.dtype("float32")
    torch.save(ckpt, tmp_path / "np.pth")
    assert set(load_pth(tmp_path / "np.pth")) == set(model.state_dict())


class NotAllowed:
    def __init__(self):
        self.payload = "anything a pickle could do"


def test_unlisted_class_is_refused_not_executed(tmp_path):
    model = _model("finetuned", "test", 256)
    torch.save({"model": model.state_dict(), "extra": NotAllowed()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth: refusing to unpickle .*NotAllowed"):
        load_pth(tmp_path / "evil.pth")


def test_truncated_and_non_torch_files(tiny_files, tmp_path):
    _, path = tiny_files["finetuned"]
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth: not a readable PyTorch checkpoint.*truncated"):
        load_pth(tmp_path / "cut.pth")
    (tmp_path / "notes.pth").write_text("this is a text file, not a checkpoint\n" * 10)
    with pytest.raises(CheckpointError, match=r"notes\.pth: not a readable PyTorch checkpoint"):
        load_pth(tmp_path / "notes.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth: empty file"):
        load_pth(tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match=r"nothere\.pth: no such checkpoint file"):
        load_pth(tmp_path / "nothere.pth")
    torch.save({"epoch": 3, "args": None}, tmp_path / "nomodel.pth")
    with pytest.raises(CheckpointError, match=r"nomodel\.pth: expected an AudioMAE checkpoint.*'args', 'epoch'"):
        load_pth(tmp_path / "nomodel.pth")


@pytest.fixture
def tiny_state(tiny_files):
    return load_pth(tiny_files["pretrained"][1])


def test_missing_key_is_named(tiny_state):
    del tiny_state["blocks.2.attn.qkv.bias"]
    del tiny_state["cls_token"]
    with pytest.raises(CheckpointError) as err:
        convert_state_dict(tiny_state, source="ckpt.pth")
    message = str(err.value)
    assert message.startswith("ckpt.pth: state dict does not match an AudioMAE ViT (pretrained format")
    assert "missing keys (2): " in message
    assert "cls_token [1, 1, 32]" in message and "blocks.2.attn.qkv.bias [96]" in message


def test_wrong_shape_is_named_with_expected_and_found(tiny_state):
    tiny_state["blocks.1.mlp.fc1.weight"] = tiny_state["blocks.1.mlp.fc1.weight"].T
    tiny_state["norm.bias"] = np.zeros(31, np.float32)
    with pytest.raises(CheckpointError) as err:
        convert_state_dict(tiny_state, source="ckpt.pth")
    message = str(err.value)
    assert "wrong shapes (2): " in message
    assert "blocks.1.mlp.fc1.weight expected [64, 32], found [32, 64]" in message
    assert "norm.bias expected [32], found [31]" in message


def test_unexpected_key_is_named(tiny_state):
    tiny_state["blocks.0.attn.rel_pos"] = np.zeros((3, 3), np.float32)
    tiny_state["fc_norm.weight"] = np.zeros(32, np.float32)
    with pytest.raises(CheckpointError, match=r"mixes the pretrained format .* fine-tuned format"):
        convert_state_dict(tiny_state)
    del tiny_state["fc_norm.weight"]
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): blocks\.0\.attn\.rel_pos \[3, 3\]"):
        convert_state_dict(tiny_state)


def test_non_audiomae_state_dict():
    resnet_like = {"conv1.weight": np.zeros((64, 3, 7, 7)), "bn1.weight": np.ones(64), "fc.weight": np.zeros((10, 512))}
    with pytest.raises(CheckpointError, match=r"resnet\.pth: not an AudioMAE ViT state dict.*bn1\.weight, conv1"):
        convert_state_dict(resnet_like, source="resnet.pth")


def test_final_norm_missing_names_both_formats(tiny_state):
    for key in [k for k in tiny_state if k.startswith(("norm.", "decoder_")) or k == "mask_token"]:
        del tiny_state[key]
    with pytest.raises(CheckpointError, match=r"missing keys norm\.weight, norm\.bias .* fc_norm\.weight"):
        convert_state_dict(tiny_state)


def test_pos_embed_must_be_the_generated_table(tiny_state):
    tiny_state["pos_embed"] = tiny_state["pos_embed"].copy()
    tiny_state["pos_embed"][0, 5, 3] += 0.01
    with pytest.raises(CheckpointError, match=r"pos_embed is not AudioMAE's fixed sin-cos table .* max \|Δ\| = 0\.01 "
                                              r"\(row 5\)"):
        convert_state_dict(tiny_state)


def test_mapping_layouts_and_info(tiny_files):
    model, path = tiny_files["finetuned"]
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    variables, info = convert_state_dict(sd)
    p = variables["params"]
    # conv OIHW -> HWIO; linear weight transposed; LayerNorm weight -> scale
    np.testing.assert_array_equal(p["patch_embed"]["proj"]["kernel"][3, 5, 0, 7],
                                  sd["patch_embed.proj.weight"][7, 0, 3, 5])
    np.testing.assert_array_equal(p["blocks_3"]["attn"]["qkv"]["kernel"], sd["blocks.3.attn.qkv.weight"].T)
    np.testing.assert_array_equal(p["fc_norm"]["scale"], sd["fc_norm.weight"])
    assert "norm" not in p and "pos_embed" not in p
    assert info["format"] == "finetuned" and info["pooling"] == "fc_norm" and info["model_size"] == "test"
    assert (info["target_length"], info["num_classes"], info["checkpoint_posemb"]) == (256, 527, "audiomae")
    assert info["dropped_keys"] == ["head.bias", "head.weight"]
    pre_vars, pre_info = convert_state_dict(load_pth(tiny_files["pretrained"][1]))
    assert "mask_token" in pre_info["dropped_keys"] and all(
        k == "mask_token" or k.startswith("decoder_") for k in pre_info["dropped_keys"])
    assert pre_info["num_params"] == sum(v.size for v in jax.tree.leaves(pre_vars))


def test_converted_directory_round_trip(tiny_files, tmp_path):
    _, path = tiny_files["pretrained"]
    variables, info = convert_state_dict(load_pth(path), source=str(path))
    out = save_converted(tmp_path / "conv", variables, info)
    record = json.loads((tmp_path / "conv" / "audiomae.json").read_text())
    assert record["source_file"] == str(path) and record["model_size"] == "test" and record["pooling"] == "norm_mean"
    assert record["width"] == 32 and record["format"] == "pretrained" and "mask_token" in record["dropped_keys"]
    restored, restored_info = load_converted(out)
    jax.tree.map(np.testing.assert_array_equal, restored, variables)
    enc_dir, var_dir = load_audiomae(out, target_length=256, posemb="audiomae")
    enc_pth, var_pth = load_audiomae(path, target_length=256, posemb="audiomae")
    assert enc_dir == enc_pth
    x = jnp.asarray(_fbank(1, 256))
    np.testing.assert_array_equal(enc_dir.apply(var_dir, x)[1], enc_pth.apply(var_pth, x)[1])
    with pytest.raises(CheckpointError, match="already holds a converted checkpoint"):
        save_converted(out, variables, info)
    save_converted(out, variables, info, overwrite=True)
    with pytest.raises(CheckpointError, match=r"no audiomae\.json"):
        load_converted(tmp_path)


def test_load_audiomae_defaults_to_the_checkpoint_own_encoder(tiny_files):
    encoder, _ = load_audiomae(tiny_files["pretrained"][1])  # T = 256, its pos_embed is the (8, 16) grid's table
    assert (encoder.target_length, encoder.posemb, encoder.pooling, encoder.dtype) == (256, "audiomae", "norm_mean",
                                                                                        jnp.float32)
    with pytest.warns(UserWarning, match="trained at T = 256 with the 'audiomae' positional table"):
        load_audiomae(tiny_files["pretrained"][1], target_length=256, posemb="prefix")
    # another length keeps the checkpoint's own policy: its grid cropped or extended, as AudioMAE's fine-tuning does
    assert load_audiomae(tiny_files["pretrained"][1], target_length=1024)[0].posemb == "audiomae"


@pytest.fixture(scope="module")
def t512(tmp_path_factory):
    """A 'test'-size pretraining model at T = 512 (pos_embed on AudioMAE's (8, 32) grid), saved like save_model."""
    model = _model("pretrained", "test", 512, seed=11)
    path = tmp_path_factory.mktemp("t512") / "pretrained_t512.pth"
    ta.save_audiomae_checkpoint(model, path)
    return model, path


def test_t512_checkpoint_loads_with_defaults_and_matches_torch(t512):
    model, path = t512
    encoder, variables = load_audiomae(path)
    assert (encoder.target_length, encoder.posemb) == (512, "audiomae")
    # the generated table is the stored one: the loader reproduces the checkpoint it loads
    np.testing.assert_allclose(positional_table(32, 512, policy=encoder.posemb),
                               model.pos_embed[0].detach().numpy(), rtol=0, atol=1e-6)
    d_tokens, d_emb = _parity(model, path, 512, 2, None)
    assert d_tokens <= TOL and d_emb <= TOL, (d_tokens, d_emb)


def test_t512_checkpoint_overrides_behave_as_documented(t512):
    model, path = t512
    x = _fbank(1, 512, seed=2)
    with torch.no_grad():
        ref_tokens = model(torch.from_numpy(x))[0].numpy()
    # the 'prefix' table at the checkpoint's own T: other codes, with the warning; far from PyTorch
    with pytest.warns(UserWarning, match=r"pretrained_t512\.pth: this checkpoint was trained at T = 512 with the "
                                         r"'audiomae' positional table; posemb='prefix' gives its tokens other codes"):
        encoder, variables = load_audiomae(path, posemb="prefix")
    assert (encoder.target_length, encoder.posemb) == (512, "prefix")
    with jax.default_matmul_precision("highest"):
        tokens = np.asarray(jax.jit(encoder.apply)(variables, jnp.asarray(x))[0])
    assert np.abs(tokens - ref_tokens).max() > 0.1
    # a shorter T without a table keeps the checkpoint's policy: the (8, 16) grid, i.e. what PyTorch builds at
    # T = 256 for the same weights (AudioMAE's interpolate_pos_embed_audio crops the grid to the same table)
    encoder, variables = load_audiomae(path, target_length=256)
    assert (encoder.target_length, encoder.posemb) == (256, "audiomae")
    short = ta.MaskedAutoencoderViT(**_dims("test", 256), decoder_depth=2).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("pos_embed")}
    short.load_state_dict(state, strict=False)
    x = _fbank(1, 256, seed=3)
    with torch.no_grad():
        ref = short(torch.from_numpy(x))[1].numpy()
    with jax.default_matmul_precision("highest"):
        emb = np.asarray(jax.jit(encoder.apply)(variables, jnp.asarray(x))[1])
    assert np.abs(emb - ref).max() <= TOL


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_audiomae.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_cli_end_to_end_with_check(tiny_files, tmp_path):
    _, path = tiny_files["finetuned"]
    out = tmp_path / "converted"
    run = _cli("--input", path, "--output", out, "--check")
    assert run.returncode == 0, run.stderr
    assert "found AudioMAE finetuned checkpoint: ViT-test" in run.stdout
    assert "dropped 2 keys not used by the encoder: head" in run.stdout
    found = re.search(r"max \|Δ\| tokens: (\S+), embedding: (\S+) ", run.stdout)
    assert found and float(found.group(1)) <= TOL and float(found.group(2)) <= TOL
    assert (out / "audiomae.json").is_file() and (out / "variables").is_dir()
    # errors: readable, non-zero exit, naming the file
    bad = tmp_path / "bad.pth"
    bad.write_bytes(path.read_bytes()[:1000])
    run = _cli("--input", bad, "--output", tmp_path / "x")
    assert run.returncode == 2 and "error: " in run.stderr and "bad.pth" in run.stderr
    assert "Traceback" not in run.stderr


def test_cli_help_and_failed_check(tiny_files, tmp_path, capsys, monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import convert_audiomae
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit) as exit_info:
        convert_audiomae.main(["--help"])
    assert exit_info.value.code == 0 and "--check" in capsys.readouterr().out

    # a mapping bug (q and k swapped in one block) must make --check fail
    from uamix_jax.interop import audiomae

    def buggy(state_dict, **kw):
        variables, info = convert_state_dict(state_dict, **kw)
        qkv = variables["params"]["blocks_1"]["attn"]["qkv"]
        qkv["kernel"] = np.concatenate([qkv["kernel"][:, 32:64], qkv["kernel"][:, :32], qkv["kernel"][:, 64:]], 1)
        return variables, info

    monkeypatch.setattr(audiomae, "convert_state_dict", buggy)
    code = convert_audiomae.main(["--input", str(tiny_files["pretrained"][1]), "--output", str(tmp_path / "o"),
                                  "--check"])
    captured = capsys.readouterr()
    assert code == 1 and "differs from PyTorch by more than 0.0001" in captured.err
