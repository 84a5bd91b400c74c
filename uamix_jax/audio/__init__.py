"""Audio in: decoding and resampling, Kaldi-exact filterbanks, AudioMAE input post-processing."""
