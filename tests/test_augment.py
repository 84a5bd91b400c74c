"""View augmentations: crop, gain and mask invariants, keying by sample (not device), and the eval view."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uamix_jax.audio.augment import LOG_FLOOR, augment_view, eval_view, make_views, scaled_time_mask
from uamix_jax.audio.fbank import kaldi_fbank
from uamix_jax.audio.features import DATASET_STATS

MEAN, STD = DATASET_STATS["audioset"]
PAD = -MEAN / (2 * STD)  # what a 0.0 log-mel cell becomes after normalisation
T_IN, F, L = 96, 16, 64  # small shapes: time mask scales to round(192 * 64 / 1024) = 12 frames
FREQ_MASK = 6


def fbank_with(n_valid: int, seed: int = 0) -> np.ndarray:
    """Raw log-mel stand-in: distinct non-zero values in the valid frames, 0.0 after (as waveform_to_fbank gives)."""
    x = np.random.default_rng(seed).uniform(-12.0, -1.0, (T_IN, F)).astype(np.float32)
    x[n_valid:] = 0.0
    return x


def denorm(y):
    return np.asarray(y, np.float64) * 2 * STD + MEAN


@functools.partial(jax.jit, static_argnames=("gain", "freq_mask", "time_mask"))
def view(key, fbank, n_valid, gain=(0.5, 1.5), freq_mask=FREQ_MASK, time_mask=192):
    return augment_view(key, fbank, n_valid, target_length=L, gain=gain, freq_mask=freq_mask, time_mask=time_mask,
                        stats=(MEAN, STD))


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, width) of each run of True."""
    out, start = [], None
    for i, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            out.append((start, i - start))
            start = None
    return out


@pytest.mark.parametrize("n_valid", [90, 40])
def test_masks_are_one_contiguous_band_per_axis_set_to_the_pad_value(n_valid):
    x = fbank_with(n_valid)
    # the pad value as this compiled program computes it (XLA may turn the division into a multiplication)
    silent = np.asarray(view(jax.random.key(0), np.zeros_like(x), jnp.int32(0)))
    pad_value = silent[0, 0]
    assert (silent == pad_value).all() and abs(pad_value - PAD) < 1e-6
    t_max, seen_f, seen_t = scaled_time_mask(192, L), set(), set()
    assert t_max == 12
    for k in range(40):
        y = np.asarray(view(jax.random.key(k), x, jnp.int32(n_valid)))
        pad = y == pad_value
        valid = min(n_valid, L)
        assert pad[valid:].all()  # padded frames: exactly the pad value
        rows, cols = pad[:valid].all(axis=1), None
        if rows.all():
            continue  # the time mask hid every valid frame: the frequency band cannot be read off
        cols = pad[:valid][~rows].all(axis=0)
        # every pad cell inside the valid frames lies in the masked rows or columns: nothing else is exactly 0
        np.testing.assert_array_equal(pad[:valid], rows[:, None] | cols[None, :])
        f_runs, t_runs = runs(cols), runs(rows)
        assert len(f_runs) <= 1 and all(w <= FREQ_MASK for _, w in f_runs)
        assert len(t_runs) <= 1 and all(w <= t_max for _, w in t_runs)
        seen_f.update(w for _, w in f_runs)
        seen_t.update(w for _, w in t_runs)
    assert len(seen_f) >= 3 and len(seen_t) >= 3  # widths really vary


def test_crop_lies_inside_the_valid_frames_and_varies():
    n_valid = 90
    x = fbank_with(n_valid)
    starts = set()
    for k in range(30):
        y = denorm(view(jax.random.key(k), x, jnp.int32(n_valid), gain=None, freq_mask=0, time_mask=0))
        start = int(np.argmin(np.abs(x[:, 0] - y[0, 0])))
        assert 0 <= start <= n_valid - L
        np.testing.assert_allclose(y, x[start:start + L], atol=1e-5)
        starts.add(start)
    assert len(starts) >= 10
    short = fbank_with(40)  # shorter than L: the first frames, zero padded
    y = denorm(view(jax.random.key(0), short, jnp.int32(40), gain=None, freq_mask=0, time_mask=0))
    np.testing.assert_allclose(y[:40], short[:40], atol=1e-5)
    np.testing.assert_allclose(y[40:], 0.0, atol=1e-5)


def test_gain_is_one_log_domain_shift_on_valid_frames_only():
    x = fbank_with(40)
    shifts = []
    for k in range(30):
        y = denorm(view(jax.random.key(k), x, jnp.int32(40), freq_mask=0, time_mask=0))
        shift = y[:40] - x[:40]
        np.testing.assert_allclose(shift, shift[0, 0], atol=1e-4)  # one gain for the whole view
        assert 2 * np.log(0.5) - 1e-4 <= shift[0, 0] <= 2 * np.log(1.5) + 1e-4
        np.testing.assert_allclose(y[40:], 0.0, atol=1e-5)  # padding untouched
        shifts.append(shift[0, 0])
    assert np.ptp(shifts) > 0.5


@pytest.mark.parametrize("g", [0.5, 1.5])
def test_gain_keeps_floored_bins_at_the_floor(g):
    """A real 128-bin fbank of 0.3 s of noise then 0.3 s of digital silence: mel channel 3 (no FFT bin) and the
    silent frames sit at ln ε; a gain g leaves them there and shifts every other bin by 2 ln g."""
    rng = np.random.default_rng(0)
    wave = np.concatenate([0.1 * rng.standard_normal(4800), np.zeros(4800)]).astype(np.float32)
    x = np.asarray(kaldi_fbank(wave), np.float64)  # [58, 128]
    n = x.shape[0]
    floored = x <= LOG_FLOOR + 1e-4
    assert floored[:, 3].all() and floored[-20:].all()  # channel 3 everywhere; the frames inside the silence
    assert abs(LOG_FLOOR - -15.942385) < 1e-6 and (x[~floored] > LOG_FLOOR + 1.0).all()
    y = denorm(view(jax.random.key(0), jnp.asarray(x, jnp.float32), jnp.int32(n), gain=(g, g), freq_mask=0,
                    time_mask=0))[:n]
    np.testing.assert_allclose(y[floored], LOG_FLOOR, atol=1e-4)
    np.testing.assert_allclose(y[~floored], x[~floored] + 2 * np.log(g), atol=1e-4)
    # A real gain cannot push energy below the floor: log(max(g² E, ε)).
    near = fbank_with(40)
    near[5, 2] = LOG_FLOOR + 0.5
    y = denorm(view(jax.random.key(0), near, jnp.int32(40), gain=(g, g), freq_mask=0, time_mask=0))
    np.testing.assert_allclose(y[5, 2], max(LOG_FLOOR + 0.5 + 2 * np.log(g), LOG_FLOOR), atol=1e-4)


def test_views_are_deterministic_by_key():
    x = jnp.asarray(fbank_with(90))
    a, b = view(jax.random.key(3), x, jnp.int32(90)), view(jax.random.key(3), x, jnp.int32(90))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, view(jax.random.key(4), x, jnp.int32(90)))


def test_make_views_is_keyed_by_sample_index_not_by_batch_split():
    batch = jnp.asarray(np.stack([fbank_with(n, seed=n) for n in (90, 40, 70, 96, 10, 64)]))
    n_valid = jnp.array([90, 40, 70, 96, 10, 64], jnp.int32)
    index = jnp.arange(6, dtype=jnp.int32) + 100  # global positions of these samples
    key = jax.random.key(9)
    fn = jax.jit(functools.partial(make_views, target_length=L, freq_mask=FREQ_MASK, stats=(MEAN, STD)))
    va, vb = fn(key, batch, n_valid, index)
    assert va.shape == vb.shape == (6, L, F)
    ha, hb = fn(key, batch[:3], n_valid[:3], index[:3])  # as if on two devices
    ta, tb = fn(key, batch[3:], n_valid[3:], index[3:])
    np.testing.assert_array_equal(va, np.concatenate([ha, ta]))
    np.testing.assert_array_equal(vb, np.concatenate([hb, tb]))
    for s in range(6):  # the documented keying: fold_in(key, sample_index) then fold_in(., view)
        sample_key = jax.random.fold_in(key, index[s])
        np.testing.assert_array_equal(va[s], view(jax.random.fold_in(sample_key, 0), batch[s], n_valid[s]))
        np.testing.assert_array_equal(vb[s], view(jax.random.fold_in(sample_key, 1), batch[s], n_valid[s]))
        assert not np.array_equal(va[s], vb[s])


def test_eval_view_is_the_first_frames_normalised():
    x = fbank_with(50)
    y = np.asarray(eval_view(jnp.asarray(x), jnp.int32(50), L, stats=(MEAN, STD)))
    expect = np.zeros((L, F), np.float64)
    expect[:50] = x[:50]
    np.testing.assert_allclose(y, (expect - MEAN) / (2 * STD), rtol=1e-6, atol=1e-6)
    batch = np.asarray(eval_view(jnp.stack([jnp.asarray(x)] * 2), jnp.array([50, 20], jnp.int32), L,
                                 stats="audioset"))
    np.testing.assert_allclose(batch[0], y, atol=1e-6)
    np.testing.assert_allclose(batch[1, 20:], PAD, atol=1e-6)


def test_input_checks():
    with pytest.raises(AssertionError):
        augment_view(jax.random.key(0), jnp.zeros((2, T_IN, F)), jnp.int32(3), target_length=L)
    with pytest.raises(AssertionError):
        make_views(jax.random.key(0), jnp.zeros((2, T_IN, F)), jnp.zeros((3,), jnp.int32), jnp.zeros((2,), jnp.int32),
                   target_length=L)
    with pytest.raises(ValueError, match="unknown normalisation stats 'as'"):
        eval_view(jnp.zeros((T_IN, F)), jnp.int32(3), L, stats="as")
    with pytest.raises(ValueError, match="std > 0"):  # checked here too since resolve_stats is shared
        augment_view(jax.random.key(0), jnp.zeros((T_IN, F)), jnp.int32(3), target_length=L, stats=(-4.0, 0.0))
