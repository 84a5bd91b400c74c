"""load_encoder on a converted AudioMAE directory, a .pth, and training workdirs; its error messages."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uamix_jax.evaluation.encoders import load_encoder, random_encoder
from uamix_jax.models.vit import AudioMAEEncoder

torch = pytest.importorskip("torch")


def _fbank(batch, t, seed=0):
    return (0.5 * np.random.default_rng(seed).standard_normal((batch, t, 128))).astype(np.float32)


@pytest.fixture(scope="module")
def audiomae_files(tmp_path_factory):
    """A 'test'-size AudioMAE pretrained model at T = 1024 (as released): its .pth and its converted directory."""
    from uamix_jax.interop import torch_audiomae as ta
    from uamix_jax.interop.audiomae import convert_state_dict, save_converted

    root = tmp_path_factory.mktemp("audiomae")
    model = ta.randomize_(ta.MaskedAutoencoderViT(width=32, depth=4, num_heads=2, mlp_dim=64, target_length=1024,
                                                  decoder_depth=1), seed=3).eval()
    pth = root / "pretrained.pth"
    ta.save_audiomae_checkpoint(model, pth)
    variables, info = convert_state_dict({k: v.numpy() for k, v in model.state_dict().items()}, source=str(pth))
    converted = save_converted(root / "converted", variables, info)
    return model, str(pth), converted


@pytest.mark.parametrize("which", ["converted", "pth"])
def test_audiomae_checkpoint_matches_torch(audiomae_files, which):
    model, pth, converted = audiomae_files
    encoder, variables = load_encoder(converted if which == "converted" else pth)
    assert isinstance(encoder, AudioMAEEncoder)
    assert (encoder.width, encoder.depth, encoder.target_length, encoder.pooling) == (32, 4, 1024, "norm_mean")
    x = _fbank(2, 1024)
    with torch.no_grad():
        _, ref = model(torch.from_numpy(x))
    _, emb = jax.jit(encoder.apply)(variables, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(emb), ref.numpy(), atol=1e-5)


def test_audiomae_shorter_input_follows_the_posemb_policy(audiomae_files):
    from uamix_jax.interop.audiomae import load_audiomae

    _, _, converted = audiomae_files
    x = jnp.asarray(_fbank(1, 128))
    out = {}
    for posemb in ("prefix", "audiomae"):
        encoder, variables = load_encoder(converted, target_length=128, posemb=posemb)
        assert (encoder.target_length, encoder.posemb) == (128, posemb)
        ref_encoder, ref_variables = load_audiomae(converted, target_length=128, posemb=posemb)
        out[posemb] = np.asarray(jax.jit(encoder.apply)(variables, x)[1])
        np.testing.assert_array_equal(out[posemb], np.asarray(jax.jit(ref_encoder.apply)(ref_variables, x)[1]))
    assert np.abs(out["prefix"] - out["audiomae"]).max() > 1e-3  # the two tables really differ at T = 128


def _fake_workdir(path, size, target_length, steps_and_seeds, pooling="norm_mean"):
    """A workdir as the trainer writes it: config.json + orbax checkpoints of a state dict via Checkpointer."""
    from uamix_jax.train.checkpoint import Checkpointer

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"stage": 2, "model": {"size": size, "target_length": target_length, "pooling": pooling,
                                         "posemb": "prefix", "remat": False}, "derived": {}}, f)
    encoder = AudioMAEEncoder.from_size(size, target_length=target_length, pooling=pooling)
    saved = {}
    ckpt = Checkpointer(str(path), keep=3, async_save=False)
    for step, seed in steps_and_seeds:
        params = encoder.init(jax.random.key(seed), jnp.zeros((1, target_length, 128)))["params"]
        head = {"projector": {"Dense_0": {"kernel": jnp.full((32, 8), float(seed))}}}
        state = {"step": jnp.asarray(step), "params": {"encoder": params, "head": head},
                 "queue": jnp.zeros((16, 8)), "opt_state": {"mu": jnp.zeros((3,))}}
        ckpt.save(step, state, force=True)
        saved[step] = params
    ckpt.close()
    return encoder, saved


def test_training_workdir_loads_latest_checkpoint(tmp_path):
    encoder_ref, saved = _fake_workdir(tmp_path / "stage2", "test", 128, [(10, 1), (20, 2)])
    encoder, variables = load_encoder(str(tmp_path / "stage2"))
    assert (encoder.width, encoder.depth, encoder.target_length) == (32, 4, 128)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 variables["params"], saved[20])
    x = jnp.asarray(_fbank(2, 128, seed=1))
    assert encoder == encoder_ref
    apply = jax.jit(encoder.apply)
    np.testing.assert_array_equal(np.asarray(apply(variables, x)[1]), np.asarray(apply({"params": saved[20]}, x)[1]))
    assert not np.allclose(np.asarray(apply(variables, x)[1]), np.asarray(apply({"params": saved[10]}, x)[1]))


def test_training_workdir_pooling_and_length_override(tmp_path):
    _fake_workdir(tmp_path / "w", "test", 128, [(1, 0)], pooling="fc_norm")
    encoder, variables = load_encoder(str(tmp_path / "w"), target_length=256, dtype=jnp.bfloat16)
    assert encoder.pooling == "fc_norm" and encoder.target_length == 256 and encoder.dtype == jnp.bfloat16
    assert "fc_norm" in variables["params"]
    _, emb = jax.jit(encoder.apply)(variables, jnp.asarray(_fbank(1, 256)))
    assert emb.dtype == jnp.float32 and emb.shape == (1, 32)


def test_workdir_whose_config_disagrees_with_the_checkpoint(tmp_path):
    _fake_workdir(tmp_path / "w", "test", 128, [(1, 0)])
    with open(tmp_path / "w" / "config.json", "w") as f:
        json.dump({"model": {"size": "tiny", "target_length": 128, "pooling": "norm_mean"}}, f)
    with pytest.raises(ValueError, match=r"w: the checkpoint's encoder does not fit; missing \(96\): blocks_10/.*"
                                         r"mis-shaped \(53\): blocks_0/attn/proj/bias expected \(192,\), "
                                         r"found \(32,\)"):
        load_encoder(str(tmp_path / "w"))


def test_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist"):
        load_encoder(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="random init"):
        load_encoder("")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match=r"plain is neither a converted AudioMAE directory"):
        load_encoder(str(tmp_path / "plain"))
    _fake_workdir(tmp_path / "demo" / "stage1", "test", 128, [(1, 0)])
    with pytest.raises(ValueError, match=r"holds training workdirs \['stage1'\]"):
        load_encoder(str(tmp_path / "demo"))
    (tmp_path / "started" / "checkpoints").mkdir(parents=True)  # a run killed before its first save
    with pytest.raises(FileNotFoundError, match=r"started: not a usable training workdir: no config.json .*; no "
                                                r"finished checkpoint under checkpoints/"):
        load_encoder(str(tmp_path / "started"))
    (tmp_path / "cfg_only").mkdir()
    (tmp_path / "cfg_only" / "config.json").write_text(json.dumps({"model": {"size": "test", "target_length": 128,
                                                                             "pooling": "norm_mean"}}))
    with pytest.raises(FileNotFoundError, match=r"cfg_only: not a usable training workdir: no checkpoints/ folder$"):
        load_encoder(str(tmp_path / "cfg_only"))


def test_is_training_workdir_for_every_kind(tmp_path):
    """One definition: config.json + a finished step under checkpoints/ (a tuning, pretraining or fine-tuning run)."""
    from uamix_jax.interop.workdir import finished_steps, is_training_workdir, workdir_problem

    w = tmp_path / "w"
    (w / "checkpoints").mkdir(parents=True)
    assert not is_training_workdir(w) and "no config.json" in workdir_problem(w)
    (w / "config.json").write_text("{}")
    (w / "checkpoints" / "4.orbax-checkpoint-tmp-1").mkdir()  # a save in progress is not a checkpoint
    assert not is_training_workdir(w) and finished_steps(w) == []
    (w / "checkpoints" / "4").mkdir()
    assert is_training_workdir(w) and workdir_problem(w) is None and finished_steps(w) == [4]
    (w / "config.json").unlink()
    assert not is_training_workdir(w)
    assert not is_training_workdir(tmp_path / "missing")


def test_restore_state_dict_steps_and_errors(tmp_path):
    from uamix_jax.interop.workdir import restore_state_dict

    _, saved = _fake_workdir(tmp_path / "w", "test", 128, [(10, 1), (20, 2)])
    latest, first = restore_state_dict(tmp_path / "w"), restore_state_dict(tmp_path / "w", step=10)
    assert int(latest["step"]) == 20 and int(first["step"]) == 10
    np.testing.assert_array_equal(first["params"]["encoder"]["cls_token"], saved[10]["cls_token"])
    assert isinstance(latest["queue"], np.ndarray)
    with pytest.raises(FileNotFoundError, match=r"has no finished checkpoint of step 15; it has \[10, 20\]"):
        restore_state_dict(tmp_path / "w", step=15)
    with pytest.raises(FileNotFoundError, match=r"is not a training workdir: it has no checkpoints/ folder"):
        restore_state_dict(tmp_path)
    # the old import path still works
    from uamix_jax.train.checkpoint import restore_state_dict as old_home

    assert old_home is restore_state_dict


def test_assign_tree_names_every_mismatch():
    from uamix_jax.interop.workdir import assign_tree

    template = {"a": {"kernel": jnp.zeros((2, 3)), "bias": jnp.zeros(3)}, "b": jax.ShapeDtypeStruct((4,), jnp.int32)}
    loaded = {"a": {"kernel": np.ones((2, 3), np.float64), "bias": np.ones(3)}, "b": np.arange(4.0)}
    out = assign_tree(template, loaded, "encoder", "src")
    assert out["a"]["kernel"].dtype == jnp.float32 and out["b"].dtype == jnp.int32
    np.testing.assert_array_equal(out["b"], np.arange(4))
    bad = {"a": {"kernel": np.ones((3, 2)), "scale": np.ones(3)}, "b": np.zeros(4), "c": {"x": np.zeros(1)}}
    with pytest.raises(ValueError) as err:
        assign_tree(template, bad, "head", "ckpt/w", hint="Use the sizes it was trained with.")
    assert str(err.value) == ("ckpt/w: the head does not fit; missing (1): a/bias; unexpected (2): a/scale, c/x; "
                              "mis-shaped (1): a/kernel expected (2, 3), found (3, 2). Use the sizes it was trained "
                              "with.")


def test_training_workdir_defaults_to_its_own_length_and_table(tmp_path):
    _fake_workdir(tmp_path / "w", "test", 128, [(1, 0)])
    with open(tmp_path / "w" / "config.json") as f:
        record = json.load(f)
    record["model"]["posemb"] = "audiomae"  # trained with the (8, T/16) table, as AudioMAE fine-tuning does
    with open(tmp_path / "w" / "config.json", "w") as f:
        json.dump(record, f)
    encoder, variables = load_encoder(str(tmp_path / "w"))
    assert (encoder.target_length, encoder.posemb) == (128, "audiomae")
    with pytest.warns(UserWarning, match=r"trained at T = 128 with the 'audiomae' positional table; posemb='prefix'"):
        encoder, _ = load_encoder(str(tmp_path / "w"), posemb="prefix")
    assert encoder.posemb == "prefix"
    encoder, _ = load_encoder(str(tmp_path / "w"), target_length=256)  # another T: its own policy, no warning
    assert (encoder.target_length, encoder.posemb) == (256, "audiomae")


def test_interop_imports_nothing_from_train():
    """train imports interop (workdir reading, AudioMAE loading), so interop must never import train: evaluation's
    checkpoint reader lives there (tests/test_public_api.py checks evaluation itself)."""
    import ast
    import pathlib

    offenders = []
    for path in sorted((pathlib.Path(__file__).resolve().parents[1] / "uamix_jax" / "interop").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("uamix_jax.train")]
    assert not offenders, offenders


def test_random_encoder_is_seeded():
    e1, v1 = random_encoder("test", target_length=128, seed=0)
    _, v2 = random_encoder("test", target_length=128, seed=0)
    _, v3 = random_encoder("test", target_length=128, seed=1)
    assert e1.target_length == 128
    leaves = lambda v: np.concatenate([np.ravel(x) for x in jax.tree.leaves(v)])  # noqa: E731
    np.testing.assert_array_equal(leaves(v1), leaves(v2))
    assert not np.array_equal(leaves(v1), leaves(v3))


def test_a_workdir_saved_on_eight_devices_loads_on_one(tmp_path):
    """A run saved from a multi-device job (here 8 fake CPU devices, the state replicated over them as the trainer
    holds it) loads with load_encoder in a process that has a single device (a laptop after a TPU run)."""
    import subprocess
    import sys

    from uamix_jax.sharding import data_mesh, replicate
    from uamix_jax.train.checkpoint import Checkpointer

    encoder = AudioMAEEncoder.from_size("test", target_length=128)
    params = encoder.init(jax.random.key(4), jnp.zeros((1, 128, 128)))["params"]
    state = replicate({"step": np.asarray(3), "params": {"encoder": params}}, data_mesh())
    assert len(jax.tree.leaves(state)[0].sharding.device_set) == 8
    ckpt = Checkpointer(str(tmp_path / "w"), async_save=False)
    ckpt.save(3, state, force=True)
    ckpt.close()
    with open(tmp_path / "w" / "config.json", "w") as f:
        json.dump({"model": {"size": "test", "target_length": 128, "pooling": "norm_mean", "posemb": "prefix"}}, f)
    np.save(tmp_path / "cls.npy", np.asarray(params["cls_token"]))
    code = ("import jax, numpy as np; from uamix_jax.evaluation.encoders import load_encoder\n"
            f"_, v = load_encoder({str(tmp_path / 'w')!r}); assert jax.device_count() == 1\n"
            f"np.testing.assert_array_equal(v['params']['cls_token'], np.load({str(tmp_path / 'cls.npy')!r}))\n"
            "print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
