"""A tiny HEAR 2021 module for the tests (PyTorch): a fixed random projection of a clip's log power spectrum.

    model = load_model(path)          # path: a text file holding the projection's seed ("" = seed 0)
    get_scene_embeddings(audio [B, N] at 8 kHz, model) -> [B, 24]: W · log(mean_t |STFT|² + 1e-6)

It runs at 8 kHz, so the harness must resample for it; CALLS records the shape of every audio batch it gets.
"""
from __future__ import annotations

import torch

SAMPLE_RATE = 8000
N_FFT = 256
DIM = 24
CALLS: list[tuple[int, ...]] = []


class TinyHear(torch.nn.Module):
    sample_rate = SAMPLE_RATE
    scene_embedding_size = DIM
    timestamp_embedding_size = DIM

    def __init__(self, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(N_FFT // 2 + 1, DIM, generator=generator) / 12.0)
        self.register_buffer("window", torch.hann_window(N_FFT))

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        """log power spectrum frames [B, F, 129] (hop N_FFT / 2, centred)."""
        spec = torch.stft(audio, N_FFT, hop_length=N_FFT // 2, window=self.window, return_complex=True)
        return spec.abs().pow(2).transpose(1, 2)


def load_model(model_file_path: str = "") -> TinyHear:
    if not model_file_path:
        return TinyHear(0)
    with open(model_file_path) as f:
        return TinyHear(int(f.read()))


def get_scene_embeddings(audio: torch.Tensor, model: TinyHear) -> torch.Tensor:
    CALLS.append(tuple(audio.shape))
    power = model.frames(audio).mean(dim=1)
    return torch.log(power + 1e-6) @ model.projection


def get_timestamp_embeddings(audio: torch.Tensor, model: TinyHear) -> tuple[torch.Tensor, torch.Tensor]:
    frames = torch.log(model.frames(audio) + 1e-6) @ model.projection
    hop_ms = 1000.0 * (N_FFT // 2) / SAMPLE_RATE
    stamps = hop_ms * torch.arange(frames.shape[1], dtype=torch.float32)
    return frames, stamps.expand(audio.shape[0], -1)
