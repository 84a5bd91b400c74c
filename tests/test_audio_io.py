"""load_audio: decoding, downmix, resampling, and errors that name the file and the reason."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from uamix_jax.audio.io import AudioLoadError, load_audio, wav_truncation

SR = 16000


def _tone(freq: float, seconds: float, sr: int, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def _dominant_frequency(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum) * sr / len(wave))


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("FLAC", "PCM_24")])
def test_round_trip_integer_pcm(tmp_path, fmt, subtype):
    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32767, size=SR // 2, dtype=np.int16)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, pcm, SR, format=fmt, subtype=subtype)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.shape == (SR // 2,) and wave.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(wave, pcm.astype(np.float32) / 32768.0)  # torchaudio.load's scaling


def test_round_trip_float_wav_is_exact(tmp_path):
    wave = np.random.default_rng(1).uniform(-1, 1, 12345).astype(np.float32)
    path = tmp_path / "float.wav"
    sf.write(path, wave, SR, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), wave)


def test_stereo_is_averaged(tmp_path):
    rng = np.random.default_rng(2)
    left, right = rng.uniform(-1, 1, (2, 4000)).astype(np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, rtol=0, atol=1e-7)


def test_44k1_is_resampled_to_16k_and_keeps_its_frequency(tmp_path):
    path = tmp_path / "tone44k.flac"
    sf.write(path, _tone(1000.0, 2.0, 44100), 44100, subtype="PCM_24")
    wave = load_audio(path)
    assert wave.dtype == np.float32
    assert abs(len(wave) - 2 * SR) <= 1
    assert abs(_dominant_frequency(wave, SR) - 1000.0) <= 1.0  # FFT bin width of 2 s: 0.5 Hz
    middle = wave[SR // 2:3 * SR // 2]  # away from the resampler's edges
    np.testing.assert_allclose(np.sqrt(np.mean(middle ** 2)), 0.5 / np.sqrt(2), rtol=2e-3)
    assert len(load_audio(path, sample_rate=None)) == 88200  # None keeps the file's rate


def test_8k_stereo_is_upsampled_and_downmixed(tmp_path):
    path = tmp_path / "tone8k.wav"
    stereo = np.stack([_tone(440.0, 1.0, 8000), _tone(440.0, 1.0, 8000, amplitude=0.1)], axis=1)
    sf.write(path, stereo, 8000)
    wave = load_audio(path)
    assert abs(len(wave) - SR) <= 1
    assert abs(_dominant_frequency(wave, SR) - 440.0) <= 1.0
    np.testing.assert_allclose(np.abs(wave[SR // 4:3 * SR // 4]).max(), 0.3, rtol=5e-3)


def _expect_error(path, reason_pattern: str) -> AudioLoadError:
    with pytest.raises(AudioLoadError, match=reason_pattern) as info:
        load_audio(path)
    error = info.value
    assert error.path == str(path)
    assert str(path) in str(error), "the message must name the file"
    assert isinstance(error, ValueError)
    return error


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.wav", "not found")


def test_directory(tmp_path):
    _expect_error(tmp_path, "directory")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    _expect_error(path, r"empty file \(0 bytes\)")


def test_unreadable_bytes(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _expect_error(path, "cannot be decoded")


def test_truncated_header(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, _tone(440.0, 0.5, SR), SR)
    path = tmp_path / "truncated.wav"
    path.write_bytes(good.read_bytes()[:20])  # RIFF header cut inside the fmt chunk
    _expect_error(path, "cannot be decoded")


def test_truncated_data_chunk(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, _tone(440.0, 0.5, SR), SR, subtype="PCM_16")  # 8000 samples: 16000 data bytes after 44
    path = tmp_path / "cut.wav"
    path.write_bytes(good.read_bytes()[:-1000])
    assert sf.read(path)[0].shape == (7500,)  # libsndfile alone decodes it silently as a shorter clip
    _expect_error(path, "truncated: its WAV data chunk declares 16000 bytes but the file holds 15000")


def test_wav_chunk_walk_skips_odd_chunks_and_accepts_streaming_sizes(tmp_path):
    wave = _tone(440.0, 0.25, SR)
    good = tmp_path / "good.wav"
    sf.write(good, wave, SR, subtype="PCM_16")
    raw = good.read_bytes()
    assert raw[36:40] == b"data"
    # an odd-sized chunk before `data` (padded to even length), RIFF size fixed up accordingly
    extra = b"LIST" + (3).to_bytes(4, "little") + b"abc\x00"
    with_list = raw[:4] + (len(raw) - 8 + len(extra)).to_bytes(4, "little") + raw[8:36] + extra + raw[36:]
    (tmp_path / "list.wav").write_bytes(with_list)
    assert wav_truncation(str(tmp_path / "list.wav")) is None
    np.testing.assert_array_equal(load_audio(tmp_path / "list.wav"), load_audio(good))
    (tmp_path / "list_cut.wav").write_bytes(with_list[:-10])
    assert "declares 8000 bytes but the file holds 7990" in wav_truncation(str(tmp_path / "list_cut.wav"))
    # a streaming writer's placeholder size is not a truncation
    streaming = raw[:40] + (0xFFFFFFFF).to_bytes(4, "little") + raw[44:]
    (tmp_path / "stream.wav").write_bytes(streaming)
    assert wav_truncation(str(tmp_path / "stream.wav")) is None
    # other formats are left to the decoder
    sf.write(tmp_path / "a.flac", wave, SR)
    assert wav_truncation(str(tmp_path / "a.flac")) is None


def test_zero_samples(tmp_path):
    path = tmp_path / "no_samples.wav"
    sf.write(path, np.zeros(0, np.float32), SR)
    _expect_error(path, "no audio samples")


def test_nan_samples(tmp_path):
    wave = _tone(440.0, 0.25, SR)
    wave[[10, 500]] = np.nan
    wave[20] = np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, wave, SR, subtype="FLOAT")
    _expect_error(path, "3 NaN or infinite samples")


def test_audio_load_error_survives_pickling():
    import pickle

    from uamix_jax.audio.io import AudioLoadError

    err = pickle.loads(pickle.dumps(AudioLoadError("/x/a.wav", "empty file (0 bytes)")))
    assert isinstance(err, AudioLoadError)
    assert (err.path, err.reason, str(err)) == ("/x/a.wav", "empty file (0 bytes)", "/x/a.wav: empty file (0 bytes)")
