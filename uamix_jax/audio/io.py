"""Decoding audio files into 16 kHz mono float32 waveforms.

AudioMAE itself never resamples (its data must already be 16 kHz mono); this project accepts any sample rate and
channel count and converts on load: channels are averaged, the rate is changed with soxr at librosa's default
quality ('soxr_hq'). Integer PCM is scaled to [-1, 1) as torchaudio.load does (int16 / 32768).
"""
from __future__ import annotations

import os
import struct
import warnings

import numpy as np
import soundfile as sf
import soxr

from uamix_jax.audio.fbank import SAMPLE_RATE


class AudioLoadError(ValueError):
    """A file that cannot be used as audio. `path` and `reason` say which file and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # survives pickling across data-loader worker processes
        return type(self), (self.path, self.reason)


_STREAMING_SIZES = (0, 0xFFFFFFFF)  # placeholders written by streaming WAV writers: the size is unknown, not wrong


def wav_truncation(path: str) -> str | None:
    """Why a RIFF/WAVE file is cut short, or None: its `data` chunk declares more bytes than the file holds.

    libsndfile decodes such a file (e.g. an interrupted download) without an error, as a shorter clip; this walks
    the chunk headers (12-byte RIFF header, then 8-byte id + little-endian u32 size per chunk, padded to even sizes).
    Other formats and WAVs whose data size is a streaming placeholder (0 or 0xFFFFFFFF) give None.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:] != b"WAVE":
            return None
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                available = size - offset - 8
                if chunk_size not in _STREAMING_SIZES and chunk_size > available:
                    return f"truncated: its WAV data chunk declares {chunk_size} bytes but the file holds {available}"
                return None
            offset += 8 + chunk_size + (chunk_size & 1)
    return None


def _decode(path: str) -> tuple[np.ndarray, int]:
    """Returns (samples [N, C] float32, sample rate); libsndfile first, then audioread (librosa's fallback)."""
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        return data, int(sr)
    except (sf.LibsndfileError, RuntimeError, TypeError) as sf_error:  # RuntimeError: older soundfile releases
        first_error = sf_error
    # Formats libsndfile cannot read (m4a, aac, ...) decode through audioread when it finds a backend such as
    # ffmpeg. audioread directly, not librosa.load: importing librosa costs seconds in every data-loader worker.
    try:
        with warnings.catch_warnings():  # its raw backend imports stdlib modules deprecated since Python 3.11
            warnings.simplefilter("ignore", DeprecationWarning)
            import audioread

            with audioread.audio_open(path) as decoder:
                sr, channels = int(decoder.samplerate), int(decoder.channels)
                pcm = b"".join(decoder)  # 16-bit little-endian interleaved
        data = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        return data.reshape(-1, max(channels, 1)), sr
    except Exception:  # noqa: BLE001 - any fallback failure is reported with libsndfile's reason
        raise AudioLoadError(
            path, f"cannot be decoded as audio ({first_error}); check that it is a complete audio file "
            "(wav, flac, ogg, mp3, ...)") from first_error


def load_audio(path: str | os.PathLike, sample_rate: int | None = SAMPLE_RATE) -> np.ndarray:
    """Decodes `path` to a float32 mono waveform at `sample_rate` (None keeps the file's rate).

    Contract: mono = mean over channels; resampled with soxr (HQ) when the file's rate differs; returns a 1-D
    contiguous float32 array of about len * sample_rate / file_rate samples. Raises `AudioLoadError` (a ValueError
    with `.path` and `.reason`) when the file is missing, a directory, empty (0 bytes), a WAV cut short inside its
    data (`wav_truncation`), undecodable (e.g. garbage bytes or a truncated header), holds zero samples after
    decoding, or holds NaN/inf samples.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioLoadError(path, "file not found")
    if os.path.isdir(path):
        raise AudioLoadError(path, "is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioLoadError(path, "empty file (0 bytes)")
    truncated = wav_truncation(path)
    if truncated:
        raise AudioLoadError(path, truncated)
    data, sr = _decode(path)
    if data.size == 0:
        raise AudioLoadError(path, "no audio samples after decoding (zero length)")
    if not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise AudioLoadError(path, f"contains {bad} NaN or infinite samples")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if sample_rate is not None and sr != sample_rate:
        wave = soxr.resample(wave, sr, sample_rate, quality="HQ")
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
