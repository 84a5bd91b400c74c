"""ViT-B encoder forward on CPU: throughput, matmul utilisation, and the ratio to AudioMAE's encoder in PyTorch eager.

    python benchmarks/encoder.py [--batch 4] [--repeats 5] [--size base] [--target-length 1024] [--no-torch]
                                 [--malloc-tuning]
    python benchmarks/encoder.py --smoke      # the 'test' ViT at T = 128, batch 2, in seconds (no PyTorch)

utilisation = (analytic matmul FLOPs of one forward / its best time) / (FLOP/s of one big float32 jnp.dot of the
model's fc1 shape [B·N, D] × [D, 4D], measured in the same run). FLOPs counted: patch conv (as a [n, 256] × [256, D]
matmul), qkv, attention q·kᵀ and a·v, proj, fc1, fc2 (2 FLOPs per multiply-add). PyTorch runs the reference model
of uamix_jax.interop.torch_audiomae under torch.no_grad() with as many threads as XLA uses (all cores).
Timings are the best of --repeats after a warm-up (compilation excluded), interleaved so that load from other
processes hits all three alike. The last line is the figure, e.g.
`ViT-B forward: 1.13 clips/s, utilisation 70%, 0.96x torch` (measured here, 2 cores, malloc tuning).

`--malloc-tuning` re-runs the script with the glibc settings of MALLOC_TUNING (documented in the README for CPU
users): XLA and PyTorch allocate their large per-call buffers afresh on every call, and glibc returns them to the
kernel, so each call page-faults its buffers in again (≈8% of a ViT-B forward in `perf`); these settings keep the
memory in the process. They speed up both frameworks.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

try:
    import uamix_jax  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from uamix_jax.models.vit import VIT_SIZES, AudioMAEEncoder  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # cpu_malloc beside this file
from cpu_malloc import is_tuned, reexec_with_malloc_tuning  # noqa: E402

SMOKE = dict(size="test", target_length=128, batch=2, repeats=2, no_torch=True)
SHORT_NAMES = {"test": "test", "mini": "mini", "tiny": "Ti", "small": "S", "base": "B", "large": "L"}


def forward_matmul_flops(width: int, depth: int, mlp_dim: int, n_patches: int, patch_size: int = 16) -> int:
    """Matmul FLOPs of one clip's forward (2 per multiply-add); N = n_patches + 1 tokens."""
    n = n_patches + 1
    per_block = (2 * n * width * 3 * width  # qkv
                 + 2 * 2 * n * n * width  # q kᵀ and a v over all heads
                 + 2 * n * width * width  # proj
                 + 2 * 2 * n * width * mlp_dim)  # fc1, fc2
    return depth * per_block + 2 * n_patches * patch_size * patch_size * width


def _timer(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base", choices=sorted(VIT_SIZES))
    parser.add_argument("--target-length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--malloc-tuning", action="store_true",
                        help="re-run with the glibc malloc settings of MALLOC_TUNING (see the module docstring)")
    parser.add_argument("--smoke", action="store_true", help="a toy size that runs in seconds (the tests' check)")
    args = parser.parse_args(argv)
    if args.smoke:  # toy defaults; flags given explicitly still win
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
    if args.malloc_tuning and not args.smoke:
        reexec_with_malloc_tuning(__file__, list(argv) if argv is not None else sys.argv[1:])

    threads = os.cpu_count() or 1
    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was before we started
    encoder = AudioMAEEncoder.from_size(args.size, target_length=args.target_length)
    b, t = args.batch, args.target_length
    x = jnp.asarray(0.5 * np.random.default_rng(0).standard_normal((b, t, 128)), jnp.float32)
    variables = jax.jit(encoder.init)(jax.random.key(0), x[:1])
    forward = jax.jit(encoder.apply)
    compile_s = _timer(lambda: jax.block_until_ready(forward(variables, x)))

    n, d = encoder.num_patches + 1, encoder.width
    lhs = jnp.asarray(np.random.default_rng(1).standard_normal((b * n, d)), jnp.float32)
    rhs = jnp.asarray(np.random.default_rng(2).standard_normal((d, encoder.mlp_dim)), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(lhs, rhs))

    model = torch = None
    if not args.no_torch:
        import torch

        from uamix_jax.interop.torch_audiomae import MaskedAutoencoderViT

        torch.set_num_threads(threads)
        model = MaskedAutoencoderViT(width=d, depth=encoder.depth, num_heads=encoder.num_heads,
                                     mlp_dim=encoder.mlp_dim, target_length=t, decoder_depth=0).eval()
        x_torch = torch.from_numpy(np.array(x))
        with torch.no_grad():
            model(x_torch)

    best = {"dot": np.inf, "flax": np.inf, "torch": np.inf}
    for _ in range(args.repeats):
        # the reference is cheap (one fc1-sized product): time it more often so its best is a true peak
        for _ in range(5):
            best["dot"] = min(best["dot"], _timer(lambda: jax.block_until_ready(dot(lhs, rhs))))
        best["flax"] = min(best["flax"], _timer(lambda: jax.block_until_ready(forward(variables, x))))
        if model is not None:
            with torch.no_grad():
                best["torch"] = min(best["torch"], _timer(lambda: model(x_torch)))

    flops = b * forward_matmul_flops(d, encoder.depth, encoder.mlp_dim, encoder.num_patches)
    peak = 2 * lhs.shape[0] * d * encoder.mlp_dim / best["dot"]
    achieved = flops / best["flax"]
    clips = b / best["flax"]
    tuned = is_tuned()
    print(f"device: {jax.devices()[0].device_kind}, {threads} cores, jax {jax.__version__}"
          + (f", torch {torch.__version__}" if torch else "")
          + f", malloc tuning {'on' if tuned else 'off'}, load average before the run {load_before:.2f}")
    print(f"ViT-{args.size} T={t} batch {b}: {flops / b / 1e9:.1f} GFLOP/clip (matmuls), compile {compile_s:.1f} s")
    print(f"jnp.dot [{lhs.shape[0]}, {d}] x [{d}, {encoder.mlp_dim}]: {peak / 1e9:.1f} GFLOP/s (best of "
          f"{5 * args.repeats})")
    print(f"flax forward: {best['flax'] * 1e3:.0f} ms/batch, {achieved / 1e9:.1f} GFLOP/s")
    line = f"ViT-{SHORT_NAMES[args.size]} forward: {clips:.2f} clips/s, utilisation {100 * achieved / peak:.0f}%"
    if model is not None:
        print(f"torch forward: {best['torch'] * 1e3:.0f} ms/batch, {flops / best['torch'] / 1e9:.1f} GFLOP/s")
        line += f", {best['torch'] / best['flax']:.2f}x torch"
    print(line)


if __name__ == "__main__":
    main()
