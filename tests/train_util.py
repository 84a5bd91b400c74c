"""Shared pieces of the training tests: the tiny config, synthetic batches, a fresh state."""
from __future__ import annotations

import importlib.util
import os

import jax
import numpy as np

from uamix_jax.train import optim
from uamix_jax.train.state import create_state
from uamix_jax.train.tune import build_models, tune_groups, tune_init

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = None):
    """configs/<name>.py's get_config(arg), imported by path (configs/ is not a package), locked as the command line
    locks it: setting a field that does not exist is an error, not a silent new field."""
    spec = importlib.util.spec_from_file_location(f"config_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    config.lock()
    return config


def synthetic_batch(global_batch: int, clip_seconds: float, seed: int, num_classes: int = 4) -> dict[str, np.ndarray]:
    """Global batch of tones + noise with distinct ids; the last two clips are shorter than the clip (zero padded)."""
    rng = np.random.default_rng(seed)
    n = int(round(clip_seconds * 16000))
    t = np.arange(n) / 16000.0
    labels = rng.integers(0, num_classes, global_batch).astype(np.int32)
    freqs = 200.0 * (1 + labels[:, None]) * rng.uniform(0.9, 1.1, (global_batch, 1))
    wave = 0.3 * np.sin(2 * np.pi * freqs * t) + 0.05 * rng.standard_normal((global_batch, n))
    length = np.full(global_batch, n, np.int32)
    length[-2:] = n // 2
    wave[np.arange(n)[None, :] >= length[:, None]] = 0.0
    index = (seed * 1000 + np.arange(global_batch)).astype(np.int32)
    return {"waveform": wave.astype(np.float32), "length": length, "index": index, "label": labels}


def fresh_state(config, total_steps: int = 10):
    """(encoder, head, fresh tuning state, optimizer labels) of a tuning config."""
    encoder, head = build_models(config)
    state, labels = create_state(config, tune_init(config, encoder, head), tune_groups(config, encoder.depth),
                                 total_steps, jax.random.key(config.seed))
    return encoder, head, state, labels


def trainable(labels):
    return optim.trainable_mask(labels)
