"""AudioMAE weights as users find them: wrappers, timm key layouts, .safetensors (float32 and bfloat16), hf-hub names
from a hub cache laid out here (offline), the exporter's .safetensors, and the errors for bad input."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from uamix_jax.evaluation.encoders import load_encoder  # noqa: E402
from uamix_jax.interop import export as ex  # noqa: E402
from uamix_jax.interop import torch_audiomae as ta  # noqa: E402
from uamix_jax.interop.audiomae import CheckpointError, load_audiomae  # noqa: E402
from uamix_jax.interop.weights_io import parse_hub_name, read_state_dict  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIMS = dict(width=32, depth=4, num_heads=2, mlp_dim=64)  # the 'test' ViT
T = 128
ESC50 = (-6.6268077, 5.358466)  # a pretrained_cfg normalisation other than AudioSet's


def _flat(variables):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(variables)).items()}


def _encoder_keys(state):
    return {k: v for k, v in state.items() if not (k.startswith("decoder_") or k == "mask_token")}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """AudioMAE-keyed files (save_model wrappers) and the same weights in the forms users find them."""
    root = tmp_path_factory.mktemp("weights")
    pre = ta.randomize_(ta.MaskedAutoencoderViT(**DIMS, target_length=T, decoder_depth=1), seed=11).eval()
    ft = ta.randomize_(ta.VisionTransformer(**DIMS, target_length=T, num_classes=5), seed=12).eval()
    ta.save_audiomae_checkpoint(pre, root / "pretrained.pth")
    ta.save_audiomae_checkpoint(ft, root / "finetuned.pth")
    pre_sd, ft_sd = pre.state_dict(), ft.state_dict()
    timm_norm = _encoder_keys(pre_sd)  # timm fc_norm=False, num_classes=0: `norm`, no decoder
    gen = torch.Generator().manual_seed(3)
    f = {"pretrained": root / "pretrained.pth", "finetuned": root / "finetuned.pth"}
    f["state_dict"] = root / "lightning.pt"
    torch.save({"state_dict": pre_sd, "epoch": 3, "global_step": 30}, f["state_dict"])
    f["fc_norm_no_head"] = root / "pytorch_model.bin"  # timm global_pool='avg', num_classes=0, bare
    torch.save({k: v for k, v in ft_sd.items() if not k.startswith("head.")}, f["fc_norm_no_head"])
    f["norm_with_head"] = root / "timm_head.pth"  # timm fc_norm=False with a classifier
    torch.save({**timm_norm, "head.weight": torch.randn(7, 32, generator=gen), "head.bias": torch.randn(7)},
               f["norm_with_head"])
    f["safetensors"] = root / "model.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in timm_norm.items()}, f["safetensors"])
    f["bf16_safetensors"] = root / "model_bf16.safetensors"
    safetensors_torch.save_file({k: v.to(torch.bfloat16).contiguous() for k, v in timm_norm.items()},
                                f["bf16_safetensors"])
    f["safetensors_named_bin"] = root / "weights.bin"  # a safetensors file under another name
    shutil.copy(f["safetensors"], f["safetensors_named_bin"])
    return {k: str(v) for k, v in f.items()}


def _bf16(x):
    return np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32)


@pytest.mark.parametrize("case, reference", [
    ("state_dict", "pretrained"), ("fc_norm_no_head", "finetuned"), ("norm_with_head", "pretrained"),
    ("safetensors", "pretrained"), ("bf16_safetensors", "pretrained"), ("safetensors_named_bin", "pretrained")])
def test_every_form_loads_bitwise_equal_to_the_audiomae_file(files, case, reference):
    encoder, variables = load_encoder(files[case])
    ref_encoder, ref_variables = load_audiomae(files[reference])
    assert encoder == ref_encoder  # same size, T, pooling and positional table
    got, want = _flat(variables), _flat(ref_variables)
    assert set(got) == set(want)
    rounding = _bf16 if case == "bf16_safetensors" else np.asarray
    for key in want:
        assert got[key].dtype == np.float32
        np.testing.assert_array_equal(got[key], rounding(want[key]), err_msg=f"{case}: {key}")
    if case == "bf16_safetensors":  # the rounding is real: the float32 weights differ from the bf16 ones
        assert not np.array_equal(got["params/blocks_0/attn/qkv/kernel"], want["params/blocks_0/attn/qkv/kernel"])


def test_read_state_dict_keeps_what_the_file_holds(files):
    state, source = read_state_dict(files["bf16_safetensors"])
    assert source == files["bf16_safetensors"] and state["cls_token"].dtype == np.float32
    assert "norm.weight" in state and not any(k.startswith("decoder_") for k in state)
    raw = safetensors_torch.load_file(files["bf16_safetensors"])
    np.testing.assert_array_equal(state["blocks.2.mlp.fc1.weight"], raw["blocks.2.mlp.fc1.weight"].float().numpy())
    from uamix_jax.interop.audiomae import convert_state_dict

    _, info = convert_state_dict(read_state_dict(files["fc_norm_no_head"])[0])
    assert (info["format"], info["pooling"], info["dropped_keys"]) == ("finetuned", "fc_norm", [])
    assert "num_classes" not in info
    _, info = convert_state_dict(read_state_dict(files["norm_with_head"])[0])
    assert (info["format"], info["num_classes"], info["dropped_keys"]) == ("pretrained", 7, ["head.bias",
                                                                                            "head.weight"])


def test_converter_cli_checks_a_timm_fc_norm_file_against_torch(files, tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import convert_audiomae
    finally:
        sys.path.pop(0)
    code = convert_audiomae.main(["--input", files["fc_norm_no_head"], "--output", str(tmp_path / "c"), "--check"])
    out = capsys.readouterr().out
    assert code == 0 and "found AudioMAE finetuned checkpoint: ViT-test" in out and "check passed" in out
    assert "dropped" not in out


def _write_bad(path, state):
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def test_bad_safetensors_name_the_file_and_write_nothing(files, tmp_path, capsys):
    good = open(files["safetensors"], "rb").read()
    for name, data in (("half.safetensors", good[: len(good) // 2]), ("header.safetensors", good[:6])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=rf"{name}: not a readable safetensors file, it is truncated"):
            load_encoder(tmp_path / name)
    state = safetensors_torch.load_file(files["safetensors"])
    shaped = _write_bad(tmp_path / "shape.safetensors",
                        {**state, "blocks.1.mlp.fc1.weight": state["blocks.1.mlp.fc1.weight"].T})
    with pytest.raises(CheckpointError, match=r"shape\.safetensors: state dict does not match .*\n  wrong shapes "
                                              r"\(1\): blocks\.1\.mlp\.fc1\.weight expected \[64, 32\], found "
                                              r"\[32, 64\]"):
        load_audiomae(shaped)
    missing = _write_bad(tmp_path / "missing.safetensors",
                         {k: v for k, v in state.items() if k != "blocks.2.attn.proj.bias"})
    with pytest.raises(CheckpointError, match=r"missing\.safetensors: .*\n  missing keys \(1\): "
                                              r"blocks\.2\.attn\.proj\.bias \[32\]"):
        load_encoder(missing)
    # the converter stops before writing anything
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import convert_audiomae
    finally:
        sys.path.pop(0)
    assert convert_audiomae.main(["--input", missing, "--output", str(tmp_path / "out")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err and not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match=r"hf-hub:no-slash: not a hub name; write hf-hub:ORG/NAME"):
        load_encoder("hf-hub:no-slash")
    assert parse_hub_name("hf-hub:a/b@v1.0") == ("a/b", "v1.0") and parse_hub_name("hf-hub:a/b") == ("a/b", None)
    with pytest.raises(CheckpointError, match="not a hub name"):
        parse_hub_name("hf-hub:a/b@")


def test_exporter_writes_safetensors_that_timm_layout_loads_strictly(files, tmp_path, capsys):
    from uamix_jax.interop.audiomae import convert_state_dict, save_converted

    converted = save_converted(tmp_path / "conv", *convert_state_dict(read_state_dict(files["pretrained"])[0]))
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import export_audiomae
    finally:
        sys.path.pop(0)
    out = tmp_path / "w.safetensors"
    assert export_audiomae.main(["--input", converted, "--output", str(out), "--check"]) == 0
    assert "check passed" in capsys.readouterr().out
    state = safetensors_torch.load_file(str(out))
    model = ta.TimmViT(**DIMS, target_length=T, fc_norm=False)
    model.load_state_dict(state, strict=True)
    pth = ex.save_export(tmp_path / "w.pth", *(lambda e: (e.state_dict, e.meta))(ex.export_source(converted)))
    from_pth = torch.load(pth, map_location="cpu", weights_only=True)["model"]
    assert set(state) == set(from_pth)
    for key in state:
        torch.testing.assert_close(state[key], from_pth[key], rtol=0, atol=0)
    from safetensors import safe_open

    with safe_open(str(out), framework="np") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and json.loads(meta[ex.EXPORT_KEY])["kind"] == "converted"
    # and back: the export reloads to the parameters it was made from
    got, want = _flat(load_audiomae(out)[1]), _flat(load_audiomae(files["pretrained"])[1])
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    with pytest.raises(ValueError, match="file_format must be one of"):
        ex.save_export(tmp_path / "x.npz", state, {}, file_format="npz")
    # a timm fc_norm file without a head goes back as it came, no --encoder-only needed
    timm_file = files["fc_norm_no_head"]
    back = ex.export_source(save_converted(tmp_path / "fc", *convert_state_dict(read_state_dict(timm_file)[0])))
    original = torch.load(timm_file, map_location="cpu", weights_only=True)
    assert back.left_out == [] and set(back.state_dict) == set(original)
    ta.TimmViT(**DIMS, target_length=T, fc_norm=True).load_state_dict(
        {k: torch.from_numpy(v) for k, v in back.state_dict.items()}, strict=True)
    for key in set(original) - {"pos_embed"}:
        np.testing.assert_array_equal(back.state_dict[key], original[key].numpy(), err_msg=key)


_HUB_SCRIPT = r"""
import json, os, sys
import numpy as np
from flax import traverse_util
assert "huggingface_hub" not in sys.modules
from uamix_jax.evaluation.encoders import load_encoder
from huggingface_hub import constants
assert constants.HF_HUB_OFFLINE, "HF_HUB_OFFLINE must be read at import"
results = {}
for i, name in enumerate(sys.argv[2:]):
    try:
        encoder, variables = load_encoder(name)
    except Exception as err:
        results[name] = {"error": f"{type(err).__name__}: {err}"}
        continue
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(variables).items()}
    np.savez(os.path.join(sys.argv[1], f"{i}.npz"), **flat)
    results[name] = {"npz": f"{i}.npz", "pooling": encoder.pooling, "target_length": encoder.target_length}
print("RESULTS " + json.dumps(results))
"""


def _commit(label):
    return hashlib.sha1(label.encode()).hexdigest()


def _hub_repo(cache, repo_id, refs):
    """A hub cache entry as huggingface_hub lays it out: refs/<ref> holds a commit hash, snapshots/<hash>/ the files
    (here as files, where the hub links blobs)."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    for ref, (commit, contents) in refs.items():
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
        snapshot = folder / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        for filename, content in contents.items():
            if isinstance(content, dict):
                (snapshot / filename).write_text(json.dumps(content))
            else:
                shutil.copy(content, snapshot / filename)


@pytest.mark.slow
def test_hf_hub_names_resolve_offline_from_the_cache(files, tmp_path):
    cache = tmp_path / "hub"
    main, v2 = _commit("main"), _commit("v2")
    config = {"architecture": "vit_base_patch16_224", "num_classes": 0,
              "pretrained_cfg": {"mean": [ESC50[0]], "std": [ESC50[1]], "input_size": [1, T, 128]}}
    _hub_repo(cache, "test-org/audiomae-tiny", {
        # main: model.safetensors beside a pytorch_model.bin of other weights (safetensors wins) + config.json
        "main": (main, {"model.safetensors": files["safetensors"], "pytorch_model.bin": files["fc_norm_no_head"],
                        "config.json": config}),
        # v2: only pytorch_model.bin (timm's older uploads), AudioSet normalisation
        "v2": (v2, {"pytorch_model.bin": files["fc_norm_no_head"],
                    "config.json": {"pretrained_cfg": {"mean": -4.2677393, "std": 4.5689974}}})})
    names = ["hf-hub:test-org/audiomae-tiny", "hf-hub:test-org/audiomae-tiny@v2",
             f"hf-hub:test-org/audiomae-tiny@{main}", "hf-hub:test-org/absent", "hf-hub:test-org/audiomae-tiny@v3"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf_home"),
           "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", _HUB_SCRIPT, str(tmp_path), *names], capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.split("RESULTS ", 1)[1])
    expected = {names[0]: "pretrained", names[1]: "finetuned", names[2]: "pretrained"}
    for name, reference in expected.items():
        assert "npz" in results[name], results[name]
        got = dict(np.load(tmp_path / results[name]["npz"]))
        want = _flat(load_audiomae(files[reference])[1])
        assert set(got) == set(want) and results[name]["target_length"] == T
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}: {key}")
    assert results[names[1]]["pooling"] == "fc_norm" and results[names[0]]["pooling"] == "norm_mean"
    for absent in names[3:]:
        error = results[absent]["error"]
        assert error.startswith(f"CheckpointError: {absent}: neither model.safetensors nor pytorch_model.bin"), error
        assert str(cache) in error and "HF_HUB_OFFLINE is set" in error
    # the log names the normalisation the checkpoint expects (main, and main by its hash), not v2's AudioSet one
    note = "its config.json (pretrained_cfg) expects inputs normalised with mean [-6.6268077] and std [5.358466]"
    assert run.stderr.count(note) == 2, run.stderr[-3000:]
    assert f"{names[0]}: {note}" in run.stderr and f"{names[2]}: {note}" in run.stderr
    assert "audiomae-tiny@v2: its config.json" not in run.stderr
