"""Clips per second delivered by the grain input pipeline (uamix_jax.data.pipeline.make_pipeline).

Writes its own mono 16-bit WAV clips of `--seconds` (10 s) to a temp dir, once at 44.1 kHz (decode + resample +
crop) and once at 16 kHz (decode + crop), with `--workers` grain worker processes. The clock starts when the first
batch arrives (worker start-up excluded, prefetch buffers still nearly empty) and stops after `--batches` more
batches, many more than the buffers hold, so prefetched batches do not inflate the rate. Files sit in the page cache
after writing, so this measures decoding, not disk. Last line: `input pipeline: 44.1k <n> clips/s, 16k <n> clips/s`.

    python benchmarks/input_pipeline.py [--workers 2] [--batch 16] [--batches 40] [--clips 64] [--seconds 10]
    python benchmarks/input_pipeline.py --smoke     # 4 clips of 1 s, decoded in this process, in seconds
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import soundfile as sf

try:
    import uamix_jax  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uamix_jax.audio.fbank import SAMPLE_RATE  # noqa: E402
from uamix_jax.data.manifest import read_folder  # noqa: E402
from uamix_jax.data.pipeline import make_pipeline  # noqa: E402

SMOKE = dict(workers=0, batch=2, batches=3, clips=4, seconds=1.0)


def write_clips(root: str, sample_rate: int, count: int, seconds: float) -> None:
    rng = np.random.default_rng(sample_rate)
    os.makedirs(os.path.join(root, "noise"), exist_ok=True)
    n = int(seconds * sample_rate)
    for i in range(count):
        sf.write(os.path.join(root, "noise", f"clip{i:03d}.wav"),
                 (0.1 * rng.standard_normal(n)).astype(np.float32), sample_rate, subtype="PCM_16")


def clips_per_second(root: str, args: argparse.Namespace) -> float:
    clip_samples = int(round(args.seconds * SAMPLE_RATE))
    it = make_pipeline(read_folder(root), batch_size=args.batch, clip_samples=clip_samples, seed=0, train=True,
                       worker_count=args.workers)
    try:
        next(it)
        start = time.perf_counter()
        for _ in range(args.batches):
            batch = next(it)
        elapsed = time.perf_counter() - start
    finally:
        it.close()
    if batch["waveform"].shape != (args.batch, clip_samples):
        raise RuntimeError(f"the pipeline gave batches of {batch['waveform'].shape}, not {(args.batch, clip_samples)}")
    return args.batches * args.batch / elapsed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--clips", type=int, default=64, help="distinct files per sample rate")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of every clip")
    parser.add_argument("--smoke", action="store_true", help="a toy size that runs in seconds (the tests' check)")
    args = parser.parse_args(argv)
    if args.smoke:  # toy defaults; flags given explicitly still win
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, sr in (("44.1k", 44100), ("16k", 16000)):
            root = os.path.join(tmp, label)
            write_clips(root, sr, args.clips, args.seconds)
            rates[label] = clips_per_second(root, args)
            print(f"{label}: {rates[label]:.0f} clips/s ({args.workers} workers, batch {args.batch}, "
                  f"{os.cpu_count()} CPUs)", flush=True)
    print(f"input pipeline: 44.1k {rates['44.1k']:.0f} clips/s, 16k {rates['16k']:.0f} clips/s")


if __name__ == "__main__":
    main()
