"""Decoding audio files into 16 kHz mono float32 waveforms.

AudioMAE itself never resamples (its data must already be 16 kHz mono); this project accepts any sample rate and
channel count and converts on load: channels are averaged, the rate is changed with soxr (the resampler librosa uses).
"""
from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000


class AudioLoadError(ValueError):
    """A file that cannot be used as audio. `path` and `reason` say which file and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _decode(path: str) -> tuple[np.ndarray, int]:
    """Returns (samples [N, C] float32, sample rate); libsndfile first, then librosa's audioread fallback."""
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        return data, int(sr)
    except sf.LibsndfileError as sf_error:
        first_error = sf_error
    except RuntimeError as sf_error:  # older soundfile raised RuntimeError
        first_error = sf_error
    try:  # formats libsndfile cannot read (e.g. m4a) go through audioread when a backend exists
        import librosa

        data, sr = librosa.load(path, sr=None, mono=False, dtype=np.float32)
        data = np.atleast_2d(data).T
        return data, int(sr)
    except Exception:  # noqa: BLE001 - any decoder failure is reported with libsndfile's reason
        raise AudioLoadError(path, f"cannot be decoded ({first_error})") from first_error


def load_audio(path: str | os.PathLike, sample_rate: int | None = SAMPLE_RATE) -> np.ndarray:
    """Decodes `path` to a float32 mono waveform at `sample_rate` (None keeps the file's rate).

    Returns a 1-D array in [-1, 1] (for integer formats). Raises `AudioLoadError` naming the file when it is
    missing, cannot be decoded, holds no samples, or holds NaN/inf samples.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioLoadError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise AudioLoadError(path, "empty file (0 bytes)")
    data, sr = _decode(path)
    if data.size == 0:
        raise AudioLoadError(path, "no audio samples after decoding (zero length)")
    if not np.all(np.isfinite(data)):
        raise AudioLoadError(path, "contains NaN or infinite samples")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if sample_rate is not None and sr != sample_rate:
        wave = soxr.resample(wave, sr, sample_rate, quality="HQ").astype(np.float32)
        if wave.size == 0:
            raise AudioLoadError(path, f"no samples left after resampling {sr} Hz -> {sample_rate} Hz")
    return np.ascontiguousarray(wave, dtype=np.float32)


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds from the file header (no decoding); raises `AudioLoadError` if unreadable."""
    try:
        info = sf.info(os.fspath(path))
    except Exception as e:  # noqa: BLE001
        raise AudioLoadError(path, f"cannot read header ({e})") from e
    return float(info.frames) / float(info.samplerate) if info.samplerate else 0.0
