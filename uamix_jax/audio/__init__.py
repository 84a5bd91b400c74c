"""Audio in: decoding and resampling, Kaldi-exact filterbanks, AudioMAE input post-processing."""
from uamix_jax.audio.fbank import FRAME_LENGTH, FRAME_SHIFT, SAMPLE_RATE

__all__ = ["FRAME_LENGTH", "FRAME_SHIFT", "SAMPLE_RATE"]
