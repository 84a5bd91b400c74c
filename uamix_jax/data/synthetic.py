"""Synthetic labelled sound classes as WAV files, for the README demo and the tests.

Each class is a family of sounds that differ clip to clip (random pitch, timing, gain and background noise), so a
good embedding separates the classes and still sees instances differ. Written in the folder-per-class layout
(`read_dataset('folder', root)`); by default a few clips are 44.1 kHz or stereo so the demo also exercises
resampling and down-mixing. Deterministic from `seed`. Two disjoint families: `TUNING_CLASSES` (what the demo tunes
on, and the default of every synthetic dataset) and `HELDOUT_CLASSES` (what the demo's few-shot evaluation measures:
classes the tuning never sees, as the paper evaluates on datasets the tuning did not use).
Run `python -m uamix_jax.data.synthetic OUT_DIR` to make one.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

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


def _square_wave(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    return np.sign(np.sin(2 * np.pi * rng.uniform(300, 700) * t))


def _vibrato(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    f0, depth, rate = rng.uniform(800, 1500), rng.uniform(0.05, 0.1), rng.uniform(5, 7)
    phase = 2 * np.pi * f0 * (t - depth * np.cos(2 * np.pi * rate * t) / (2 * np.pi * rate))
    return np.sin(phase)


def _noise_bursts(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    rate = rng.uniform(4, 8)
    gate = (np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)) > 0).astype(float)
    return rng.standard_normal(t.shape[0]) * gate


def _pitch_steps(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    step = int(sr * rng.uniform(0.1, 0.2))
    freqs = rng.uniform(300, 3000, size=t.shape[0] // step + 1)
    return np.sin(2 * np.pi * np.cumsum(np.repeat(freqs, step)[: t.shape[0]]) / sr)


def _trill(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    f0, period = rng.uniform(500, 1000), rng.uniform(0.05, 0.08)
    freq = np.where((t // period) % 2 == 0, f0, 1.5 * f0)
    return np.sin(2 * np.pi * np.cumsum(freq) / sr)


def _rumble(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(t.shape[0]))
    spectrum[np.fft.rfftfreq(t.shape[0], 1.0 / sr) > rng.uniform(200, 400)] = 0.0
    out = np.fft.irfft(spectrum, n=t.shape[0])
    return out / (np.abs(out).max() + 1e-9)


TUNING_CLASSES: dict[str, Synth] = {
    "low_tone": _low_tone, "high_tone": _high_tone, "up_chirp": _up_chirp, "down_chirp": _down_chirp,
    "click_train": _click_train, "band_noise": _band_noise, "am_tone": _am_tone, "harmonic_stack": _harmonic_stack,
}
HELDOUT_CLASSES: dict[str, Synth] = {
    "square_wave": _square_wave, "vibrato": _vibrato, "noise_bursts": _noise_bursts, "pitch_steps": _pitch_steps,
    "trill": _trill, "rumble": _rumble,
}
SYNTH_CLASSES: dict[str, Synth] = {**TUNING_CLASSES, **HELDOUT_CLASSES}


def synthesize_clip(class_name: str, rng: np.random.Generator, seconds: float, sample_rate: int) -> np.ndarray:
    """One clip of `class_name`: the sound over a random 60-100 % stretch of the clip, faded in and out, at a
    random level, over white noise 20-35 dB below it. float32 [round(seconds * sample_rate)]."""
    n = int(round(seconds * sample_rate))
    length = int(n * rng.uniform(0.6, 1.0))
    start = int(rng.integers(0, n - length + 1))
    t = np.arange(length) / sample_rate
    sound = SYNTH_CLASSES[class_name](rng, t, sample_rate)
    fade = np.minimum(1.0, np.minimum(np.arange(length), np.arange(length)[::-1]) / (0.01 * sample_rate))
    sound = sound * fade / (np.sqrt(np.mean(sound ** 2)) + 1e-9)
    clip = np.zeros(n)
    clip[start:start + length] = sound
    clip += rng.standard_normal(n) * 10 ** (-rng.uniform(20, 35) / 20)
    return (clip * rng.uniform(0.2, 0.6) / (np.abs(clip).max() + 1e-9)).astype(np.float32)


def _class_names(num_classes: int, classes: Sequence[str] | None) -> list[str]:
    if classes is not None:
        unknown = [c for c in classes if c not in SYNTH_CLASSES]
        if unknown or not classes:
            raise ValueError(f"synthetic classes {unknown or '[]'} unknown; choose from {list(SYNTH_CLASSES)}")
        return list(classes)
    if not 1 <= num_classes <= len(TUNING_CLASSES):
        raise ValueError(f"make_demo_dataset: num_classes must be 1..{len(TUNING_CLASSES)}, got {num_classes}")
    return list(TUNING_CLASSES)[:num_classes]


def make_demo_dataset(root: str | os.PathLike, *, num_classes: int = 6, clips_per_class: int = 24,
                      seconds: float = 2.0, sample_rate: int = SAMPLE_RATE, seed: int = 0, odd_formats: bool = True,
                      classes: Sequence[str] | None = None) -> str:
    """Writes `num_classes` x `clips_per_class` WAV clips to `root/<class>/<class>_<k>.wav` and returns root.

    Classes are `classes` (names of SYNTH_CLASSES) when given, else the first `num_classes` of TUNING_CLASSES. With
    odd_formats, clip k % 8 == 3 is written at 44.1 kHz and clip k % 8 == 6 in stereo (two slightly different
    channels). Same seed, same files (bit for bit); a class's clips depend on its name, not on its position.
    """
    names = _class_names(num_classes, classes)
    if clips_per_class < 1 or seconds <= 0:
        raise ValueError(f"make_demo_dataset: clips_per_class >= 1 and seconds > 0 needed, got "
                         f"{clips_per_class}, {seconds}")
    root = os.fspath(root)
    for name in names:
        c = list(SYNTH_CLASSES).index(name)
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for k in range(clips_per_class):
            rng = np.random.default_rng([seed, c, k])
            rate = 44100 if odd_formats and k % 8 == 3 else sample_rate
            clip = synthesize_clip(name, rng, seconds, rate)
            if odd_formats and k % 8 == 6:
                clip = np.stack([clip, 0.9 * clip + 0.01 * rng.standard_normal(clip.shape[0])], axis=1)
            sf.write(os.path.join(root, name, f"{name}_{k:03d}.wav"), np.clip(clip, -1, 1), rate, subtype="PCM_16")
    return root


def ensure_demo_dataset(root: str | os.PathLike, *, num_classes: int = 8, clips_per_class: int = 24,
                        seconds: float = 2.0, seed: int = 0, classes: Sequence[str] | None = None) -> str:
    """`make_demo_dataset` into `root` unless it is already there (written to `root.tmp`, then renamed, so an
    interrupted run never leaves half a dataset); returns root. The demos' shared way to make their data once."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        names = _class_names(num_classes, classes)
        print(f"synthesising {len(names)} classes x {clips_per_class} clips into {root}", file=sys.stderr, flush=True)
        make_demo_dataset(root + ".tmp", clips_per_class=clips_per_class, seconds=seconds, seed=seed, classes=names)
        os.replace(root + ".tmp", root)
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m uamix_jax.data.synthetic OUT_DIR")
    print(make_demo_dataset(sys.argv[1]))
