"""A small synthetic labelled dataset for the README demo and the tests: distinct sound classes as WAV files.

Each class is a family of sounds that differ clip to clip (random pitch, timing, gain and background noise), so a
good embedding separates the classes and still sees instances differ. Written in the folder-per-class layout
(`read_dataset('folder', root)`); by default a few clips are 44.1 kHz or stereo so the demo also exercises
resampling and down-mixing. Deterministic from `seed`. Run `python -m uamix_jax.data.demo OUT_DIR` to make one.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np
import soundfile as sf

from uamix_jax.audio.fbank import SAMPLE_RATE

Synth = Callable[[np.random.Generator, np.ndarray, int], np.ndarray]


def _low_tone(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    return np.sin(2 * np.pi * rng.uniform(150, 300) * t)


def _high_tone(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    return np.sin(2 * np.pi * rng.uniform(2000, 3500) * t)


def _chirp(f0: float, f1: float, t: np.ndarray) -> np.ndarray:
    rate = (f1 - f0) / max(t[-1], 1e-3)
    return np.sin(2 * np.pi * (f0 * t + 0.5 * rate * t * t))


def _up_chirp(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    return _chirp(rng.uniform(300, 600), rng.uniform(3000, 5000), t)


def _down_chirp(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    return _chirp(rng.uniform(3000, 5000), rng.uniform(300, 600), t)


def _click_train(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    out = np.zeros_like(t)
    period = int(sr / rng.uniform(8, 20))
    click = np.exp(-np.arange(int(0.004 * sr)) / (0.0008 * sr)) * rng.choice([-1.0, 1.0], int(0.004 * sr))
    for start in range(int(rng.integers(0, period)), t.shape[0] - click.shape[0], period):
        out[start:start + click.shape[0]] += click
    return out


def _band_noise(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(t.shape[0]))
    freqs = np.fft.rfftfreq(t.shape[0], 1.0 / sr)
    centre = rng.uniform(1000, 3000)
    spectrum[np.abs(freqs - centre) > 250] = 0.0
    out = np.fft.irfft(spectrum, n=t.shape[0])
    return out / (np.abs(out).max() + 1e-9)


def _am_tone(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    return np.sin(2 * np.pi * rng.uniform(600, 1200) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 8) * t))


def _harmonic_stack(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    f0 = rng.uniform(100, 250)
    return sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 9))


DEMO_CLASSES: dict[str, Synth] = {
    "low_tone": _low_tone, "high_tone": _high_tone, "up_chirp": _up_chirp, "down_chirp": _down_chirp,
    "click_train": _click_train, "band_noise": _band_noise, "am_tone": _am_tone, "harmonic_stack": _harmonic_stack,
}


def synthesize_clip(class_name: str, rng: np.random.Generator, seconds: float, sample_rate: int) -> np.ndarray:
    """One clip of `class_name`: the sound over a random 60-100 % stretch of the clip, faded in and out, at a
    random level, over white noise 20-35 dB below it. float32 [round(seconds * sample_rate)]."""
    n = int(round(seconds * sample_rate))
    length = int(n * rng.uniform(0.6, 1.0))
    start = int(rng.integers(0, n - length + 1))
    t = np.arange(length) / sample_rate
    sound = DEMO_CLASSES[class_name](rng, t, sample_rate)
    fade = np.minimum(1.0, np.minimum(np.arange(length), np.arange(length)[::-1]) / (0.01 * sample_rate))
    sound = sound * fade / (np.sqrt(np.mean(sound ** 2)) + 1e-9)
    clip = np.zeros(n)
    clip[start:start + length] = sound
    clip += rng.standard_normal(n) * 10 ** (-rng.uniform(20, 35) / 20)
    return (clip * rng.uniform(0.2, 0.6) / (np.abs(clip).max() + 1e-9)).astype(np.float32)


def make_demo_dataset(root: str | os.PathLike, *, num_classes: int = 6, clips_per_class: int = 24,
                      seconds: float = 2.0, sample_rate: int = SAMPLE_RATE, seed: int = 0, odd_formats: bool = True) -> str:
    """Writes `num_classes` x `clips_per_class` WAV clips to `root/<class>/<class>_<k>.wav` and returns root.

    Classes are the first `num_classes` of DEMO_CLASSES. With odd_formats, clip k % 8 == 3 is written at 44.1 kHz
    and clip k % 8 == 6 in stereo (two slightly different channels). Same seed, same files (bit for bit).
    """
    if not 1 <= num_classes <= len(DEMO_CLASSES):
        raise ValueError(f"make_demo_dataset: num_classes must be 1..{len(DEMO_CLASSES)}, got {num_classes}")
    if clips_per_class < 1 or seconds <= 0:
        raise ValueError(f"make_demo_dataset: clips_per_class >= 1 and seconds > 0 needed, got "
                         f"{clips_per_class}, {seconds}")
    root = os.fspath(root)
    for c, name in enumerate(list(DEMO_CLASSES)[:num_classes]):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for k in range(clips_per_class):
            rng = np.random.default_rng([seed, c, k])
            rate = 44100 if odd_formats and k % 8 == 3 else sample_rate
            clip = synthesize_clip(name, rng, seconds, rate)
            if odd_formats and k % 8 == 6:
                clip = np.stack([clip, 0.9 * clip + 0.01 * rng.standard_normal(clip.shape[0])], axis=1)
            sf.write(os.path.join(root, name, f"{name}_{k:03d}.wav"), np.clip(clip, -1, 1), rate, subtype="PCM_16")
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m uamix_jax.data.demo OUT_DIR")
    print(make_demo_dataset(sys.argv[1]))


def ensure_demo_dataset(root: str | os.PathLike, *, num_classes: int = 8, clips_per_class: int = 24,
                        seconds: float = 2.0, seed: int = 0) -> str:
    """`make_demo_dataset` into `root` unless it is already there (written to `root.tmp`, then renamed, so an
    interrupted run never leaves half a dataset); returns root. The demos' shared way to make their data once."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        print(f"synthesising {num_classes} classes x {clips_per_class} clips into {root}", file=sys.stderr, flush=True)
        make_demo_dataset(root + ".tmp", num_classes=num_classes, clips_per_class=clips_per_class, seconds=seconds,
                          seed=seed)
        os.replace(root + ".tmp", root)
    return root
