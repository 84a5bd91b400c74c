"""Clips per second delivered by the grain input pipeline (uamix_jax.data.pipeline.make_pipeline).

Writes its own 10 s mono 16-bit WAV clips to a temp dir, once at 44.1 kHz (decode + resample + crop) and once at
16 kHz (decode + crop), with `--workers` grain worker processes. The clock starts when the first batch arrives
(worker start-up excluded, prefetch buffers still nearly empty) and stops after `--batches` more batches, many more
than the buffers hold, so prefetched batches do not inflate the rate. Files sit in the page cache after writing,
so this measures decoding, not disk. Last line: `input pipeline: 44.1k <n> clips/s, 16k <n> clips/s`.

    python benchmarks/input_pipeline.py [--workers 2] [--batch 16] [--batches 40]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from uamix_jax.data.manifest import read_folder  # noqa: E402
from uamix_jax.data.pipeline import make_pipeline  # noqa: E402

SECONDS = 10.0
CLIP_SAMPLES = 160000  # 10 s at 16 kHz


def write_clips(root: str, sample_rate: int, count: int) -> None:
    rng = np.random.default_rng(sample_rate)
    os.makedirs(os.path.join(root, "noise"), exist_ok=True)
    n = int(SECONDS * sample_rate)
    for i in range(count):
        sf.write(os.path.join(root, "noise", f"clip{i:03d}.wav"),
                 (0.1 * rng.standard_normal(n)).astype(np.float32), sample_rate, subtype="PCM_16")


def clips_per_second(root: str, args: argparse.Namespace) -> float:
    it = make_pipeline(read_folder(root), batch_size=args.batch, clip_samples=CLIP_SAMPLES, seed=0, train=True,
                       worker_count=args.workers)
    try:
        next(it)
        start = time.perf_counter()
        for _ in range(args.batches):
            batch = next(it)
        elapsed = time.perf_counter() - start
    finally:
        it.close()
    assert batch["waveform"].shape == (args.batch, CLIP_SAMPLES)
    return args.batches * args.batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--clips", type=int, default=64, help="distinct files per sample rate")
    args = parser.parse_args()
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, sr in (("44.1k", 44100), ("16k", 16000)):
            root = os.path.join(tmp, label)
            write_clips(root, sr, args.clips)
            rates[label] = clips_per_second(root, args)
            print(f"{label}: {rates[label]:.0f} clips/s ({args.workers} workers, batch {args.batch}, "
                  f"{os.cpu_count()} CPUs)", flush=True)
    print(f"input pipeline: 44.1k {rates['44.1k']:.0f} clips/s, 16k {rates['16k']:.0f} clips/s")


if __name__ == "__main__":
    main()
