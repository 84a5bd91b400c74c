"""Kaldi log-mel filterbanks in JAX, numerically equal to `torchaudio.compliance.kaldi.fbank` at AudioMAE's options.

AudioMAE computes its input with

    torchaudio.compliance.kaldi.fbank(w, htk_compat=True, sample_frequency=16000, use_energy=False,
                                      window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)

which, per frame t of 400 samples taken every 160 (snip_edges, so n_frames = 1 + (N - 400) // 160), is

    x_t    = frame_t - mean(frame_t)                          (remove_dc)
    y_t[i] = x_t[i] - 0.97 x_t[i - 1],   y_t[0] = x_t[0] - 0.97 x_t[0]      (pre-emphasis)
    Y_t    = rfft_512(y_t * hann_sym_400)                     (zero-padded to the next power of two)
    fbank[t, m] = log(max(sum_k |Y_t[k]|^2 H[k, m], eps))     (Kaldi mel triangles H, eps = float32 eps)

with H the Kaldi mel bank: `num_mel_bins` triangles equally spaced on mel(f) = 1127 ln(1 + f / 700) between
`low_freq` and `high_freq` (<= 0 means Nyquist + high_freq), evaluated on the FFT bins k * sr / 512 for
k < 256 and zero on the Nyquist bin, without area normalisation. A triangle that covers no FFT bin (mel channel 3
at 128 bins, 16 kHz) stays at log(eps) = -15.942385, as in torchaudio; Kaldi itself refuses such a bank.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

# AudioMAE's input: 16 kHz audio in Kaldi frames of 25 ms every 10 ms. Every module takes these numbers from here.
SAMPLE_RATE = 16000  # Hz
FRAME_LENGTH = 400  # samples per frame (25 ms at 16 kHz)
FRAME_SHIFT = 160  # samples per hop (10 ms at 16 kHz)
ENERGY_FLOOR = 1.1920929e-7  # float32 eps: mel energies are floored here before the log, log(ENERGY_FLOOR) ≈ -15.94

# Frames per lax.map step on CPU. The spectra of one block (about 2 MB at 512 points) stay in the CPU caches, which
# makes the transform of 64 ten-second clips about twice as fast as one pass over the whole batch. GPUs and TPUs
# get the whole batch in one step: serial steps would only idle them.
_FRAMES_PER_BLOCK = 2048
# Above this many gcd-wide slices per frame the strided-slice framing would unroll into too many ops; fall back to
# one static gather (only for unusual frame lengths, e.g. 25 ms at 22.05 kHz, where gcd(551, 220) = 1).
_MAX_SLICES = 32


def _mel_scale(freq: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(freq, np.float64) / 700.0)


@functools.lru_cache(maxsize=None)
def kaldi_mel_banks(num_mel_bins: int, padded_window_size: int, sample_rate: float, low_freq: float,
                    high_freq: float) -> np.ndarray:
    """The Kaldi/torchaudio mel weight matrix H, float32 [padded_window_size // 2 + 1, num_mel_bins].

    H[k, m] = max(0, min((mel_k - l_m) / (c_m - l_m), (r_m - mel_k) / (r_m - c_m))) for k < n_fft / 2 and 0 on the
    Nyquist row, with l_m, c_m, r_m = mel_low + (m, m + 1, m + 2) * (mel_high - mel_low) / (num_mel_bins + 1).
    """
    if num_mel_bins < 1:
        raise ValueError(f"kaldi_fbank: num_mel_bins must be >= 1, got {num_mel_bins}")
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ValueError(
            f"kaldi_fbank: need 0 <= low_freq < high_freq <= Nyquist ({nyquist} Hz), got low_freq={low_freq}, "
            f"high_freq={high_freq} (a high_freq <= 0 counts from the Nyquist frequency)")
    num_fft_bins = padded_window_size // 2
    mel_low, mel_high = _mel_scale(low_freq), _mel_scale(high_freq)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    m = np.arange(num_mel_bins, dtype=np.float64)[None, :]
    left, center, right = mel_low + m * delta, mel_low + (m + 1) * delta, mel_low + (m + 2) * delta
    mel = _mel_scale(sample_rate / padded_window_size * np.arange(num_fft_bins))[:, None]
    weights = np.maximum(0.0, np.minimum((mel - left) / (center - left), (right - mel) / (right - center)))
    weights = np.concatenate([weights, np.zeros((1, num_mel_bins))], axis=0)  # the Nyquist bin gets no weight
    return weights.astype(np.float32)


def _frames(x: jax.Array, window_size: int, window_shift: int, n_frames: int) -> jax.Array:
    """[B, N] -> [B, n_frames, window_size] (snip_edges) without a gather.

    With g = gcd(window_size, window_shift), the signal viewed as rows of g samples holds frame t in rows
    t * shift / g ... t * shift / g + size / g - 1, so the frames are size / g strided row slices, side by side.
    """
    g = math.gcd(window_size, window_shift)
    used = (n_frames - 1) * window_shift + window_size
    if window_size // g > _MAX_SLICES:
        index = np.arange(n_frames)[:, None] * window_shift + np.arange(window_size)[None, :]
        return x[:, index]
    rows = x[:, :used].reshape(x.shape[0], used // g, g)
    step = window_shift // g
    last = (n_frames - 1) * step + 1
    return jnp.concatenate([rows[:, j:j + last:step, :] for j in range(window_size // g)], axis=-1)


def _fbank_block(x: jax.Array, *, window: np.ndarray, mel: np.ndarray, window_shift: int, n_frames: int,
                 padded_window_size: int, preemphasis: float, remove_dc: bool, eps: float) -> jax.Array:
    """[b, N] float32 -> [b, n_frames, num_mel_bins] log mel energies (one block of clips)."""
    window_size = window.shape[0]
    frames = _frames(x, window_size, window_shift, n_frames)
    if remove_dc:
        frames = frames - jnp.mean(frames, axis=-1, keepdims=True)
    if preemphasis != 0.0:
        previous = jnp.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)  # Kaldi: x[-1] := x[0]
        frames = frames - preemphasis * previous
    frames = frames * window
    # zero padding inside the same fusion feeds the FFT a contiguous power-of-two row
    frames = jnp.pad(frames, ((0, 0), (0, 0), (0, padded_window_size - window_size)))
    spectrum = jnp.fft.rfft(frames, axis=-1)
    power = jnp.square(spectrum.real) + jnp.square(spectrum.imag)
    # HIGHEST: TPUs and GPUs otherwise multiply float32 in bfloat16 / TF32, which moves log energies by ~1e-2
    energies = jnp.matmul(power, mel, precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(energies, eps))


def num_frames(num_samples: int, *, sample_rate: int = SAMPLE_RATE, frame_length_ms: float = 25.0,
               frame_shift_ms: float = 10.0) -> int:
    """Kaldi's snip_edges frame count 1 + (N - window_size) // window_shift (0 when N < window_size)."""
    window_size = int(sample_rate * frame_length_ms * 0.001)
    window_shift = int(sample_rate * frame_shift_ms * 0.001)
    if num_samples < window_size:
        return 0
    return 1 + (num_samples - window_size) // window_shift


def frames_to_samples(n_frames: int) -> int:
    """The fewest 16 kHz samples that make `n_frames` frames: (n_frames - 1) * FRAME_SHIFT + FRAME_LENGTH."""
    if n_frames < 1:
        raise ValueError(f"frames_to_samples: need at least one frame, got n_frames={n_frames}")
    return (n_frames - 1) * FRAME_SHIFT + FRAME_LENGTH


def kaldi_fbank(waveform: jax.Array | np.ndarray, *, sample_rate: int = SAMPLE_RATE, num_mel_bins: int = 128,
                frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0, low_freq: float = 20.0,
                high_freq: float = 0.0, preemphasis: float = 0.97, remove_dc: bool = True,
                energy_floor_eps: float = ENERGY_FLOOR) -> jax.Array:
    """Kaldi log-mel filterbank energies, equal to torchaudio.compliance.kaldi.fbank (see the module docstring).

    Args:
      waveform: float [..., N] samples at `sample_rate` (any leading axes; N >= one frame, 400 at 16 kHz). The
        clip mean is NOT removed here; AudioMAE removes it first (`uamix_jax.audio.features.waveform_to_fbank`).
      The keywords are torchaudio's options (dither 0, snip_edges, symmetric Hann window, power spectrum,
      FFT size = next power of two of the frame, use_energy False).

    Returns:
      float32 [..., n_frames, num_mel_bins], n_frames = 1 + (N - 400) // 160 at the defaults. Jittable; every
      argument except `waveform` must be static.
    """
    waveform = jnp.asarray(waveform)
    if waveform.ndim < 1:
        raise ValueError("kaldi_fbank: waveform must have a sample axis [..., N], got a scalar")
    if not jnp.issubdtype(waveform.dtype, jnp.floating):
        raise TypeError(f"kaldi_fbank: waveform must be floating point (samples in [-1, 1]), got {waveform.dtype}; "
                        "convert integer PCM with x / 32768.0 first")
    window_size = int(sample_rate * frame_length_ms * 0.001)
    window_shift = int(sample_rate * frame_shift_ms * 0.001)
    if window_size < 2 or window_shift < 1:
        raise ValueError(f"kaldi_fbank: frame_length_ms={frame_length_ms} / frame_shift_ms={frame_shift_ms} at "
                         f"{sample_rate} Hz give a window of {window_size} and a shift of {window_shift} samples")
    num_samples = waveform.shape[-1]
    if num_samples < window_size:
        raise ValueError(
            f"kaldi_fbank: waveform of shape {waveform.shape} has {num_samples} samples on its last axis, fewer than "
            f"one frame ({window_size} samples = {frame_length_ms} ms at {sample_rate} Hz); pad short clips with "
            "zeros to at least one frame before calling it")
    n_frames = num_frames(num_samples, sample_rate=sample_rate, frame_length_ms=frame_length_ms,
                          frame_shift_ms=frame_shift_ms)
    padded_window_size = 1 << (window_size - 1).bit_length()
    mel = kaldi_mel_banks(num_mel_bins, padded_window_size, float(sample_rate), float(low_freq), float(high_freq))
    # symmetric Hann, Kaldi's and torchaudio's "hanning": 0.5 - 0.5 cos(2 pi i / (M - 1))
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(window_size) / (window_size - 1))).astype(np.float32)
    block = functools.partial(_fbank_block, window=window, mel=mel, window_shift=window_shift, n_frames=n_frames,
                              padded_window_size=padded_window_size, preemphasis=float(preemphasis),
                              remove_dc=bool(remove_dc), eps=float(energy_floor_eps))

    leading = waveform.shape[:-1]
    flat = waveform.astype(jnp.float32).reshape(-1, num_samples)
    clips_per_block = max(1, _FRAMES_PER_BLOCK // n_frames)
    if jax.default_backend() != "cpu" or flat.shape[0] <= clips_per_block:
        out = block(flat)
    else:
        out = jax.lax.map(lambda clip: block(clip[None])[0], flat, batch_size=clips_per_block)
    return out.reshape(leading + (n_frames, num_mel_bins))
