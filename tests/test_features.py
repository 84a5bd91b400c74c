"""AudioMAE's input pipeline: mean removal, fbank on padded batches, pad/crop to target_length, normalisation."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from uamix_jax.audio.fbank import kaldi_fbank
from uamix_jax.audio.features import (DATASET_STATS, audiomae_features, load_audiomae_input, n_valid_frames,
                                      normalize_fbank, pad_or_crop_frames, resolve_stats, waveform_to_fbank)

REFERENCE = Path(__file__).parent / "data" / "fbank_reference.npz"
SR = 16000
AS_MEAN, AS_STD = -4.2677393, 4.5689974
fbank_jit = jax.jit(kaldi_fbank)
to_fbank_jit = jax.jit(waveform_to_fbank)


def assert_fbank_close(actual, reference, *, within: float = 16.0, near_atol: float = 1e-3, all_atol: float = 0.05):
    """|d| <= 1e-3 on log-energies within 16 nats of their frame's maximum, <= 0.05 everywhere (float32 FFT noise)."""
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    assert actual.shape == reference.shape, (actual.shape, reference.shape)
    near = reference >= reference.max(axis=-1, keepdims=True) - within
    diff = np.abs(actual - reference)
    assert diff[near].max() <= near_atol, f"near-peak max |d| {diff[near].max()}"
    assert diff.max() <= all_atol, f"max |d| {diff.max()}"


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as data:
        return {k: data[k] for k in data.files}


def test_dataset_stats_are_audiomaes():
    assert DATASET_STATS == {"audioset": (-4.2677393, 4.5689974), "esc50": (-6.6268077, 5.358466),
                             "speechcommands": (-6.845978, 5.5654526)}


def test_resolve_stats_names_pairs_and_errors():
    for name, pair in DATASET_STATS.items():
        assert resolve_stats(name) == pair
    assert resolve_stats((-6.5, 5.25)) == (-6.5, 5.25)
    assert resolve_stats([-6, np.float32(5.25)]) == (-6.0, 5.25)  # a list (JSON config) and numpy numbers
    assert all(type(v) is float for v in resolve_stats([-6, np.float32(5.25)]))
    with pytest.raises(ValueError, match=r"unknown normalisation stats 'AudioSet'.*\['audioset', 'esc50', "):
        resolve_stats("AudioSet")
    for bad_std in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"finite std > 0.*\(mean, std\) = \(-4.0, "):
            resolve_stats((-4.0, bad_std))
    with pytest.raises(ValueError, match="finite mean"):
        resolve_stats((float("nan"), 1.0))
    for bad in ((1.0,), (1.0, 2.0, 3.0), ("a", "b"), 4.5):
        with pytest.raises(ValueError, match=r"a \(mean, std\) pair of numbers"):
            resolve_stats(bad)


def test_audiomae_features_match_audiomae_input(reference):
    """torchaudio fbank of the 10 s clip, zero-padded to 1024 frames, (x + 4.2677393) / (2 * 4.5689974)."""
    wave = reference["wave_mix_10s"]
    expected = reference["audiomae_input_mix_10s"]
    out = np.asarray(jax.jit(audiomae_features)(wave[None])[0])
    assert out.shape == expected.shape == (1024, 128)
    # the 26 padding frames hold AudioMAE's value for a zero log-energy (to 1 ulp: XLA divides by a constant
    # as a multiplication by its reciprocal)
    np.testing.assert_allclose(out[998:], expected[998:], rtol=2e-7, atol=0)
    np.testing.assert_allclose(out[998:], -AS_MEAN / (2 * AS_STD), rtol=2e-7)
    # the fbank frames, compared in the log domain where the tolerance is defined
    assert_fbank_close(out[:998] * 2 * AS_STD + AS_MEAN, expected[:998] * 2 * AS_STD + AS_MEAN)


def _padded_batch(rng, lengths, num_samples, garbage=0.0):
    """Clips with their own DC offsets (so the mean removal matters), padded to num_samples with `garbage`."""
    clips = [(0.1 * rng.standard_normal(n) + 0.3 * np.sin(np.arange(n) * 0.05) + rng.uniform(-0.5, 0.5))
             .astype(np.float32) for n in lengths]
    batch = np.full((len(lengths), num_samples), garbage, np.float32)
    for i, clip in enumerate(clips):
        batch[i, :len(clip)] = clip
    return clips, batch


def test_padded_batch_equals_unpadded_clips_plus_zero_frames():
    rng = np.random.default_rng(5)
    lengths = [8000, 5000, 1000, 399, 400, 559, 560, 0]
    num_samples = 8000
    clips, batch = _padded_batch(rng, lengths, num_samples)
    fbank, n_valid = jax.jit(waveform_to_fbank)(batch, np.array(lengths, np.int32))
    fbank = np.asarray(fbank)
    assert fbank.shape == (8, 48, 128) and fbank.dtype == np.float32
    expected_valid = [max(0, 1 + (n - 400) // 160) for n in lengths]
    assert n_valid.dtype == jnp.int32 and n_valid.tolist() == expected_valid == [48, 29, 4, 0, 1, 1, 2, 0]
    for clip, fb, n in zip(clips, fbank, expected_valid):
        if n:  # AudioMAE's _wav2fbank on the unpadded clip
            assert_fbank_close(fb[:n], fbank_jit(clip - clip.mean()))
        assert not fb[n:].any(), "frames past the clip must be exactly 0.0"


def test_padding_content_and_length_beyond_the_array_are_ignored():
    rng = np.random.default_rng(6)
    _, zero_padded = _padded_batch(rng, [3000, 6000], 6400)
    junk = zero_padded.copy()
    junk[0, 3000:] = 7.0  # not zero padding: must not leak into the mean or the valid frames
    length = np.array([3000, 6000], np.int32)
    a, _ = to_fbank_jit(zero_padded, length)
    b, _ = to_fbank_jit(junk, length)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    beyond, n_beyond = to_fbank_jit(zero_padded, np.array([3000, 10 ** 6], np.int32))  # clipped to N
    whole, _ = to_fbank_jit(zero_padded, np.array([3000, 6400], np.int32))
    np.testing.assert_array_equal(np.asarray(beyond), np.asarray(whole))
    assert n_beyond.tolist() == [17, 38]
    none, n_none = to_fbank_jit(zero_padded[1:])  # length None: every sample valid
    assert_fbank_close(none[0], fbank_jit(zero_padded[1] - zero_padded[1].mean()))
    assert n_none.tolist() == [38]


def test_n_valid_frames_formula():
    lengths = np.array([0, 1, 399, 400, 559, 560, 16000, 160000])
    expected = np.maximum(0, 1 + (lengths - 400) // 160)
    np.testing.assert_array_equal(n_valid_frames(lengths), expected)
    np.testing.assert_array_equal(n_valid_frames(lengths, 98), np.minimum(expected, 98))


def test_waveform_to_fbank_rejects_bad_inputs():
    with pytest.raises(ValueError, match="399 samples"):
        waveform_to_fbank(np.zeros((2, 399), np.float32), np.array([399, 10]))
    with pytest.raises(AssertionError):  # chex: [B, N] only
        waveform_to_fbank(np.zeros(4000, np.float32), np.array([4000]))
    with pytest.raises(AssertionError):  # one length per clip
        waveform_to_fbank(np.zeros((2, 4000), np.float32), np.array([4000]))
    with pytest.raises(TypeError, match="integer"):
        waveform_to_fbank(np.zeros((1, 4000), np.float32), np.array([4000.0]))


def test_pad_or_crop_frames():
    x = np.random.default_rng(0).standard_normal((2, 3, 10, 4)).astype(np.float32)
    padded = np.asarray(pad_or_crop_frames(x, 13))
    assert padded.shape == (2, 3, 13, 4)
    np.testing.assert_array_equal(padded[..., :10, :], x)
    np.testing.assert_array_equal(padded[..., 10:, :], 0.0)
    np.testing.assert_array_equal(pad_or_crop_frames(x, 7), x[..., :7, :])
    np.testing.assert_array_equal(pad_or_crop_frames(x[0, 0], 10), x[0, 0])
    with pytest.raises(ValueError, match="target_length"):
        pad_or_crop_frames(x, 0)


def test_normalize_fbank():
    x = np.array([[0.0, -4.2677393, 5.0]], np.float32)
    np.testing.assert_allclose(normalize_fbank(x, AS_MEAN, AS_STD),
                               [[4.2677393 / 9.1379948, 0.0, 9.2677393 / 9.1379948]], rtol=1e-6)
    with pytest.raises(ValueError, match="std"):
        normalize_fbank(x, 0.0, 0.0)


def test_audiomae_features_stats_target_length_and_batching():
    rng = np.random.default_rng(9)
    clips, batch = _padded_batch(rng, [32000, 12000], 32000)
    length = np.array([32000, 12000], np.int32)
    features = jax.jit(audiomae_features, static_argnames=("target_length", "stats"))
    out = np.asarray(features(batch, length, target_length=128, stats="esc50"))
    assert out.shape == (2, 128, 128)
    mean, std = DATASET_STATS["esc50"]
    fbank, _ = to_fbank_jit(batch, length)
    fbank = np.asarray(fbank)
    np.testing.assert_allclose(out, (fbank[:, :128] - mean) / (2 * std), rtol=1e-6, atol=1e-6)  # crop: 198 > 128
    padded = np.asarray(features(batch, length, target_length=256, stats=(mean, std)))
    np.testing.assert_allclose(padded[:, :198], (fbank - mean) / (2 * std), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(padded[:, 198:], -mean / (2 * std), rtol=1e-6)  # zero padding, normalised
    np.testing.assert_allclose(padded[1, 73:198], -mean / (2 * std), rtol=1e-6)  # clip 1 has 73 frames
    with pytest.raises(ValueError, match="audioset"):
        audiomae_features(batch, length, stats="librispeech")


def test_load_audiomae_input(reference, tmp_path):
    wave = reference["wave_mix_10s"]
    path = tmp_path / "mix_10s.wav"
    sf.write(path, wave, SR, subtype="FLOAT")
    out = load_audiomae_input(path)
    assert out.shape == (1024, 128) and out.dtype == np.float32
    expected = reference["audiomae_input_mix_10s"]
    np.testing.assert_allclose(out[998:], expected[998:], rtol=2e-7, atol=0)
    assert_fbank_close(out[:998] * 2 * AS_STD + AS_MEAN, expected[:998] * 2 * AS_STD + AS_MEAN)


def test_load_audiomae_input_crops_after_removing_the_whole_clip_mean(tmp_path):
    """A 3 s clip into 128 frames: AudioMAE removes the mean of all 3 s, then keeps the first 128 frames."""
    rng = np.random.default_rng(2)
    t = np.arange(3 * SR) / SR
    wave = (0.1 * rng.standard_normal(t.size) + 0.4 * (t > 2.0)).astype(np.float32)  # the mean comes from the end
    path = tmp_path / "step.flac"
    sf.write(path, wave, SR, subtype="PCM_24")
    decoded = sf.read(path, dtype="float32")[0]
    out = load_audiomae_input(path, target_length=128, stats="speechcommands")
    mean, std = DATASET_STATS["speechcommands"]
    expected = (np.asarray(fbank_jit(decoded - decoded.mean()))[:128] - mean) / (2 * std)
    assert_fbank_close(out * 2 * std + mean, expected * 2 * std + mean)
    tiny = tmp_path / "tiny.wav"
    sf.write(tiny, wave[:300], SR)
    np.testing.assert_allclose(load_audiomae_input(tiny, target_length=16), -AS_MEAN / (2 * AS_STD), rtol=2e-7)
