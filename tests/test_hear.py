"""uamix_jax.hear, the HEAR 2021 API: the HEAR validator on a converted checkpoint and a training workdir (T = 128),
and numpy oracles for the windows, the scene embedding, the timestamp embeddings and their timestamps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
validate = pytest.importorskip("hearvalidator.validate")

from uamix_jax import hear  # noqa: E402
from uamix_jax.audio.fbank import frames_to_samples  # noqa: E402
from uamix_jax.audio.features import DATASET_STATS, audiomae_features  # noqa: E402

T = 128  # configs/test.py's target_length: the validator's 1.98 s and 4 s clips need 3 and 6 windows
P = T // 16  # time patches per window
D = 32  # the 'test' ViT's width


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A random 'test'-size AudioMAE checkpoint at T = 128, converted."""
    from uamix_jax.interop import torch_audiomae as ta
    from uamix_jax.interop.audiomae import convert_state_dict, save_converted

    model = ta.randomize_(ta.MaskedAutoencoderViT(width=D, depth=4, num_heads=2, mlp_dim=64, target_length=T,
                                                  decoder_depth=1), seed=21).eval()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    return save_converted(tmp_path_factory.mktemp("hear") / "converted", *convert_state_dict(state))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny stage-1 training workdir (configs/test.py, 2 steps) on synthetic clips."""
    from tests.train_util import load_config
    from uamix_jax import train_and_evaluate
    from uamix_jax.data.synthetic import make_demo_dataset

    root = tmp_path_factory.mktemp("hear_run")
    config = load_config("test", "stage1")
    config.data.root = make_demo_dataset(root / "clips", num_classes=2, clips_per_class=8, seconds=1.5,
                                         odd_formats=False)
    config.train.update(total_steps=2, checkpoint_every=2)
    train_and_evaluate(config, str(root / "w1"))
    return str(root / "w1")


@pytest.fixture(scope="module")
def model(converted):
    return hear.load_model(converted)


@pytest.mark.parametrize("source", ["converted", pytest.param("workdir", marks=pytest.mark.slow)])  # slow: trains
def test_hear_validator_passes(request, source):
    path = request.getfixturevalue(source)
    validate.ValidateModel("uamix_jax.hear", path, device="cpu")()
    loaded = hear.load_model(path)
    assert isinstance(loaded, torch.nn.Module) and loaded.sample_rate == 16000
    assert (loaded.scene_embedding_size, loaded.timestamp_embedding_size) == (D, D)
    assert type(loaded.scene_embedding_size) is int and loaded.encoder.target_length == T
    assert loaded.stats == DATASET_STATS["audioset"]  # the workdir's data.stats, AudioSet's by default


def test_load_model_without_a_path_names_the_accepted_ones():
    with pytest.raises(ValueError, match=r"needs a model file path: a converted AudioMAE directory .* \.safetensors\), "
                                         r"hf-hub:ORG/NAME\[@REVISION\], or a training workdir"):
        hear.load_model("")


def _audio(n_sounds, num_samples, seed=0):
    return (0.5 * np.random.default_rng(seed).uniform(-1, 1, (n_sounds, num_samples))).astype(np.float32)


def _oracle_windows(model, wave, frames):
    """Encoder outputs of the windows at frames 0, T/2, T, ... of AudioMAE's features padded to `frames` frames:
    per window (pooled [B, D], per time patch averaged over frequency [B, P, D])."""
    x = np.asarray(jax.jit(audiomae_features, static_argnames="target_length")(wave, target_length=frames))
    out = []
    with jax.default_matmul_precision("highest"):
        apply = jax.jit(model.encoder.apply)
        for start in range(0, frames - T + 1, T // 2):
            tokens, pooled = (np.asarray(a) for a in apply(model.variables, jnp.asarray(x[:, start:start + T])))
            out.append((pooled, tokens[:, 1:].reshape(len(wave), P, 8, D).mean(axis=2)))
    return out


def test_a_clip_of_t_frames_is_the_encoder_embedding(model):
    wave = _audio(3, frames_to_samples(T), seed=1)
    scene = hear.get_scene_embeddings(torch.from_numpy(wave), model)
    emb, ts = hear.get_timestamp_embeddings(torch.from_numpy(wave), model)
    [(pooled, patches)] = _oracle_windows(model, wave, T)
    assert scene.dtype == emb.dtype == torch.float32 and scene.shape == (3, D)
    np.testing.assert_allclose(scene.numpy(), pooled, rtol=0, atol=1e-5)
    assert emb.shape == (3, P, D) and ts.shape == (3, P)
    np.testing.assert_allclose(emb.numpy(), patches, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(ts.numpy()[0], 87.5 + 160.0 * np.arange(P))


def _most_central(j, windows):
    """The window (and index in it) where time patch j is farthest from an edge; the earlier one on a tie."""
    best = None
    for k in range(windows):
        local = j - k * P // 2
        if 0 <= local < P:
            distance = abs(local + 0.5 - P / 2)
            if best is None or distance < best[0]:
                best = (distance, k, local)
    return best[1], best[2]


@pytest.mark.parametrize("num_samples, frames, windows, stamps", [
    (frames_to_samples(5 * T // 2), 5 * T // 2, 4, 20),  # 2.5·T frames exactly
    (31680, 256, 3, 12)])  # the validator's 1.98 s: 197 frames, the last window padded as AudioMAE pads
def test_longer_clips_go_through_half_overlapping_windows(model, num_samples, frames, windows, stamps):
    wave = _audio(2, num_samples, seed=2)
    oracle = _oracle_windows(model, wave, frames)
    assert len(oracle) == windows == hear.num_windows(1 + (num_samples - 400) // 160, T)
    scene = hear.get_scene_embeddings(torch.from_numpy(wave), model).numpy()
    np.testing.assert_allclose(scene, np.mean([pooled for pooled, _ in oracle], axis=0), rtol=0, atol=1e-5)
    emb, ts = (t.numpy() for t in hear.get_timestamp_embeddings(torch.from_numpy(wave), model))
    assert emb.shape == (2, stamps, D) and ts.shape == (2, stamps)
    for j in range(stamps):
        k, local = _most_central(j, windows)
        np.testing.assert_allclose(emb[:, j], oracle[k][1][:, local], rtol=0, atol=1e-5, err_msg=f"patch {j}")
    duration_ms = 1000.0 * num_samples / 16000
    np.testing.assert_array_equal(np.diff(ts, axis=1), 160.0)  # evenly spaced, every 160 ms
    assert ts[0, 0] == 87.5 and ts[0, -1] <= duration_ms < ts[0, -1] + 160.0  # inside, and none left out
    np.testing.assert_array_equal(ts[0], ts[1])


def test_short_sounds_and_timestamp_rule():
    # patch j's centre 160 j + 87.5 ms must lie inside the sound
    assert [hear.num_timestamps(n) for n in (0, 399, 1399, 1400, 3959, 3960, 20720)] == [1, 1, 1, 1, 1, 2, 8]
    np.testing.assert_array_equal(hear.patch_timestamps_ms(1000), [31.25])  # shorter than one centre: its midpoint
    np.testing.assert_array_equal(hear.patch_timestamps_ms(3960), [87.5, 247.5])
    assert [hear.num_windows(n, T) for n in (0, 128, 129, 192, 193, 320)] == [1, 1, 2, 2, 3, 4]
    window, local = hear.most_central_window(20, P, 4)
    np.testing.assert_array_equal(window, [0] * 6 + [1] * 4 + [2] * 4 + [3] * 6)
    np.testing.assert_array_equal(local, [0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 2, 3, 4, 5, 2, 3, 4, 5, 6, 7])


def test_short_audio_and_one_compilation_per_chunk_size(converted):
    fresh = hear.load_model(converted, stats="esc50", window_batch=4)  # other stats: programs of its own
    assert fresh.stats == DATASET_STATS["esc50"]
    compiled = hear._embed_windows._cache_size()
    for n in (300, 1000):  # no whole frame, and no whole patch: one embedding, the padding alone
        emb, ts = hear.get_timestamp_embeddings(torch.from_numpy(_audio(2, n)), fresh)
        assert emb.shape == (2, 1, D) and np.isfinite(emb.numpy()).all() and 0 < ts[0, 0] <= 500 * n / 16000
    for b, n in ((1, 20720), (2, 25000), (2, 30000), (3, 64000), (1, 160000)):  # 1 to 33 windows per call
        hear.get_scene_embeddings(torch.from_numpy(_audio(b, n)), fresh)
    assert hear._embed_windows._cache_size() == compiled + 3  # chunks of 1, 2 and 4 windows, whatever the lengths
