"""Few-shot evaluation speed: 600 episodes over cached embeddings, and the frozen encoder's embedding throughput.

1. Episodes: 2,000 random 768-d embeddings in 50 classes of 40 (ESC-50's shape); 600 episodes of 5-way 1-shot with
   15 queries. Reported: host sampling time and the one jitted evaluation call (after compilation), best of
   `--repeats`. Target: < 1 s on CPU.
2. Embedding: ViT-B (random weights) at T = 1024 on a batch of `--batch` 10.255 s clips, waveform → Kaldi fbank →
   encoder → mean-pooled embedding, the jitted function the embedding cache runs (after compilation; best of
   `--embed-repeats`), in clips/s. The batch is split over the local devices, as in `embed_manifest` (rounded up to
   a multiple of their count; every row is a real clip of exactly T frames).

    python benchmarks/fewshot.py [--episodes 600] [--batch 8] [--size base] [--target-length 1024]
    python benchmarks/fewshot.py --smoke      # 50 episodes over 200 x 32 embeddings, the 'test' ViT at T = 128

Last line: `fewshot: 600 episodes <s> s; ViT-B embedding <r> clips/s`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

try:
    import uamix_jax  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from uamix_jax.evaluation.embed import InputPolicy, make_embed_fn  # noqa: E402
from uamix_jax.evaluation.encoders import random_encoder  # noqa: E402
from uamix_jax.evaluation.episodes import sample_episodes  # noqa: E402
from uamix_jax.evaluation.fewshot import episode_accuracies  # noqa: E402
from uamix_jax.sharding import batch_sharding, data_mesh, replicated  # noqa: E402

SMOKE = dict(clips=200, classes=10, dim=32, episodes=50, repeats=2, size="test", target_length=128, batch=2,
             embed_repeats=2)


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_episodes(args: argparse.Namespace) -> float:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((args.clips, args.dim)).astype(np.float32)
    labels = np.repeat(np.arange(args.classes, dtype=np.int32), args.clips // args.classes)
    emb_device = jax.device_put(emb)  # cached embeddings live on the device once per evaluation

    def sample():
        return sample_episodes(labels, ways=args.ways, shots=args.shots, queries=args.queries,
                               episodes=args.episodes, seed=0)

    eps = sample()
    t0 = time.perf_counter()
    acc = episode_accuracies(emb_device, eps.support, eps.query, eps.query_mask)
    print(f"episodes: first call (compile + run) {time.perf_counter() - t0:.3f} s; mean accuracy "
          f"{100 * acc.mean():.2f} % (chance {100 / args.ways:.0f} %)")
    t_sample = _best(sample, args.repeats)
    t_eval = _best(lambda: episode_accuracies(emb_device, eps.support, eps.query, eps.query_mask), args.repeats)
    print(f"{args.episodes} episodes of {args.ways}-way {args.shots}-shot, {args.queries} queries over "
          f"[{args.clips}, {args.dim}]: sampling {t_sample:.4f} s, evaluation {t_eval:.4f} s (best of {args.repeats})")
    return t_sample + t_eval


def bench_embedding(args: argparse.Namespace) -> float:
    encoder, variables = random_encoder(args.size, target_length=args.target_length, seed=0)
    policy = InputPolicy(target_length=args.target_length, crop="centre")
    mesh = data_mesh(jax.local_devices())
    batch = -(-args.batch // mesh.devices.size) * mesh.devices.size
    data = batch_sharding(mesh)
    variables = jax.device_put(variables, replicated(mesh))
    wave = jax.device_put(0.1 * np.random.default_rng(1).standard_normal((batch, policy.clip_samples))
                          .astype(np.float32), data)
    length = jax.device_put(np.full((batch,), policy.clip_samples, np.int32), data)
    fn = make_embed_fn(encoder, policy)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(variables, wave, length))
    print(f"embedding: ViT-{args.size} T={args.target_length}, batch {batch}; first call (compile + run) "
          f"{time.perf_counter() - t0:.1f} s")
    best = _best(lambda: jax.block_until_ready(fn(variables, wave, length)), args.embed_repeats)
    print(f"embedding: {best:.3f} s per batch of {batch}")
    return batch / best


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", default="base")
    parser.add_argument("--target-length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--embed-repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a toy size that runs in seconds (the tests' check)")
    args = parser.parse_args(argv)
    if args.smoke:  # toy defaults; flags given explicitly still win
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
    print(f"devices: {jax.devices()}")
    seconds = bench_episodes(args)
    rate = bench_embedding(args)
    name = {"base": "ViT-B"}.get(args.size, f"ViT-{args.size}")
    print(f"fewshot: {args.episodes} episodes {seconds:.3f} s; {name} embedding {rate:.2f} clips/s")


if __name__ == "__main__":
    main()
