"""The synthetic demo dataset: class count, determinism, odd formats, distinct classes, read by the folder reader."""
import os

import numpy as np
import pytest
import soundfile as sf

from uamix_jax.data.synthetic import HELDOUT_CLASSES, TUNING_CLASSES, make_demo_dataset
from uamix_jax.data.layouts import read_dataset
from uamix_jax.data.pipeline import make_pipeline


def tree_bytes(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as h:
                out[os.path.relpath(os.path.join(dirpath, f), root)] = h.read()
    return out


def test_demo_dataset_layout_formats_and_determinism(tmp_path):
    root = make_demo_dataset(tmp_path / "a", num_classes=4, clips_per_class=9, seconds=0.5, seed=3)
    assert root == str(tmp_path / "a")
    m = read_dataset("folder", root)
    assert m.class_names == tuple(sorted(list(TUNING_CLASSES)[:4])) and len(m) == 36
    assert np.bincount(m.labels).tolist() == [9, 9, 9, 9]
    infos = [sf.info(p) for p in m.paths]
    assert sorted({i.samplerate for i in infos}) == [16000, 44100] and sorted({i.channels for i in infos}) == [1, 2]
    assert all(abs(i.duration - 0.5) < 1e-3 for i in infos)
    same = make_demo_dataset(tmp_path / "b", num_classes=4, clips_per_class=9, seconds=0.5, seed=3)
    assert tree_bytes(root) == tree_bytes(same)
    other = tree_bytes(make_demo_dataset(tmp_path / "c", num_classes=4, clips_per_class=9, seconds=0.5, seed=4))
    assert other.keys() == tree_bytes(root).keys() and other != tree_bytes(root)
    plain = make_demo_dataset(tmp_path / "d", num_classes=1, clips_per_class=8, seconds=0.5, odd_formats=False)
    assert {sf.info(p).samplerate for p in read_dataset("folder", plain).paths} == {16000}


def test_demo_clips_differ_within_and_between_classes(tmp_path):
    root = make_demo_dataset(tmp_path, num_classes=8, clips_per_class=3, seconds=1.0, odd_formats=False)
    m = read_dataset("folder", root)
    batch = next(make_pipeline(m, batch_size=24, clip_samples=16000, seed=0, train=False, num_epochs=1))
    wave = batch["waveform"]
    frames = wave.reshape(24, 20, 800)  # 50 ms frames
    power = np.abs(np.fft.rfft(frames, axis=2)) ** 2
    peak = np.fft.rfftfreq(800, 1 / 16000)[power.argmax(axis=2)]  # dominant frequency per frame [24, 20]
    energy = power.sum(axis=2)
    for row in range(24):
        name, loud = m.class_names[batch["label"][row]], energy[row] > 0.1 * energy[row].max()
        f = peak[row][loud]
        if name == "low_tone":  # (frequency bins are 20 Hz wide)
            assert 140 <= np.median(f) <= 310, (name, f)
        elif name == "harmonic_stack":  # the fundamental, 100-250 Hz, dominates the 1/k harmonics
            assert 80 <= np.median(f) <= 260, (name, f)
        elif name == "high_tone":
            assert 1990 <= np.median(f) <= 3510, (name, f)
        elif name == "am_tone":
            assert 590 <= np.median(f) <= 1210, (name, f)
        elif name == "band_noise":
            assert 700 <= np.median(f) <= 3300, (name, f)
        elif name in ("up_chirp", "down_chirp"):  # the dominant frequency sweeps over time
            slope = np.corrcoef(np.flatnonzero(loud), f)[0, 1]
            assert slope > 0.9 if name == "up_chirp" else slope < -0.9, (name, slope)
        else:  # click_train: impulsive, a high crest factor
            assert np.abs(wave[row]).max() > 4 * np.sqrt(np.mean(wave[row] ** 2)), name
    for c in range(8):  # instances of one class are not copies of each other
        rows = batch["waveform"][batch["label"] == c]
        assert not np.allclose(rows[0], rows[1])
    assert np.abs(batch["waveform"]).max() <= 1.0


def test_demo_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="num_classes must be 1..8"):
        make_demo_dataset(tmp_path, num_classes=9)


def test_heldout_classes_are_distinct_sounds_disjoint_from_the_tuning_classes(tmp_path):
    assert not set(HELDOUT_CLASSES) & set(TUNING_CLASSES) and len(HELDOUT_CLASSES) >= 5
    root = make_demo_dataset(tmp_path / "h", classes=list(HELDOUT_CLASSES), clips_per_class=3, seconds=1.0,
                             odd_formats=False)
    m = read_dataset("folder", root)
    assert sorted(m.class_names) == sorted(HELDOUT_CLASSES)
    batch = next(make_pipeline(m, batch_size=len(m), clip_samples=16000, seed=0, train=False, num_epochs=1))
    frames = batch["waveform"].reshape(len(m), 20, 800)  # 50 ms frames
    power = np.abs(np.fft.rfft(frames, axis=2)) ** 2
    freqs = np.fft.rfftfreq(800, 1 / 16000)
    energy = power.sum(axis=2)
    for row in range(len(m)):
        name, loud = m.class_names[batch["label"][row]], energy[row] > 0.1 * energy[row].max()
        peak = freqs[power[row].argmax(axis=1)][loud]
        spectrum = power[row][loud].sum(axis=0)
        if name == "square_wave":  # odd harmonics: the third is strong, the second absent
            f0 = np.median(peak)
            third, second = spectrum[np.argmin(abs(freqs - 3 * f0))], spectrum[np.argmin(abs(freqs - 2 * f0))]
            assert 280 <= f0 <= 720 and third > 20 * second, (name, f0)
        elif name == "vibrato":
            assert 700 <= np.median(peak) <= 1700 and np.ptp(peak) > 0, (name, peak)
        elif name == "rumble":
            assert np.median(peak) <= 420, (name, peak)
        elif name == "trill":  # two tones a fifth apart
            lo, hi = np.min(peak), np.max(peak)
            assert 480 <= lo <= 1020 and abs(hi / lo - 1.5) < 0.1, (name, lo, hi)
        elif name == "pitch_steps":  # a melody: several distinct pitches
            assert len(np.unique(np.round(peak / 40))) >= 4, (name, peak)
        else:  # noise_bursts: white noise switched on and off several times a second
            assert loud.mean() < 0.85 and np.median(peak) > 300, (name, loud.mean())
    # a class's clips depend on its name, not on the other classes asked for
    alone = make_demo_dataset(tmp_path / "r", classes=["rumble"], clips_per_class=3, seconds=1.0, odd_formats=False)
    assert tree_bytes(alone) == {k: v for k, v in tree_bytes(root).items() if k.startswith("rumble")}
