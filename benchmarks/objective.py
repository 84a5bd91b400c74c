"""Time of one jitted objective step: both NN look-ups + soft NNCLR loss (both terms) + queue update.

Default sizes are the paper's stage-1 values, B = 512, K = 65,536, D = 256, on whatever device JAX sees. The step is
compiled first, then run `--repeats` times (queue donated, as in training); the best wall time is reported.

    python benchmarks/objective.py [--batch 512] [--queue 65536] [--dim 256] [--top-k 1] [--repeats 10]
    python benchmarks/objective.py --smoke    # B = 16, K = 256, D = 32, in seconds

Last line: `objective step: <ms> ms`.
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
import jax.numpy as jnp  # noqa: E402

from uamix_jax.objectives.losses import soft_nnclr_loss, soft_targets  # noqa: E402
from uamix_jax.objectives.neighbours import nearest_neighbour  # noqa: E402
from uamix_jax.objectives.queue import init_queue, update_queue  # noqa: E402


def make_step(top_k: int):
    def step(queue, queue_ids, ptr, p_a, p_b, z_a, z_b, ids, lam, perm, key):
        k_a, k_b = jax.random.split(key)
        nn_a = nearest_neighbour(z_a, queue, queue_ids, ids, top_k=top_k, key=k_a)
        nn_b = nearest_neighbour(z_b, queue, queue_ids, ids, top_k=top_k, key=k_b)
        loss = soft_nnclr_loss(p_a, p_b, nn_a, nn_b, soft_targets(lam, perm))
        queue, queue_ids, ptr = update_queue(queue, queue_ids, ptr, z_b, ids)
        return loss, queue, queue_ids, ptr

    return jax.jit(step, donate_argnums=(0, 1, 2))


SMOKE = dict(batch=16, queue=256, dim=32, repeats=2)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--queue", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="a toy size that runs in seconds (the tests' check)")
    args = parser.parse_args(argv)
    if args.smoke:  # toy defaults; flags given explicitly still win
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)

    keys = jax.random.split(jax.random.key(0), 6)
    queue, queue_ids, _, ptr = init_queue(keys[0], args.queue, args.dim)
    queue_ids = jnp.arange(args.queue, dtype=jnp.int32) % 20550  # a full queue of AudioSet-20K-sized ids
    p_a, p_b, z_a, z_b = (jax.random.normal(k, (args.batch, args.dim)) for k in keys[1:5])
    ids = jnp.arange(args.batch, dtype=jnp.int32)
    lam = jnp.full((args.batch,), 0.7, jnp.float32)
    perm = jnp.arange(args.batch - 1, -1, -1, dtype=jnp.int32)
    step = make_step(args.top_k)

    t0 = time.perf_counter()
    loss, queue, queue_ids, ptr = step(queue, queue_ids, ptr, p_a, p_b, z_a, z_b, ids, lam, perm, keys[5])
    jax.block_until_ready(loss)
    print(f"devices: {jax.devices()}; B={args.batch} K={args.queue} D={args.dim} top_k={args.top_k}")
    print(f"first call (compile + run): {1e3 * (time.perf_counter() - t0):.1f} ms, loss {float(loss):.4f}")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        loss, queue, queue_ids, ptr = step(queue, queue_ids, ptr, p_a, p_b, z_a, z_b, ids, lam, perm, keys[5])
        jax.block_until_ready((loss, queue, queue_ids, ptr))
        times.append(time.perf_counter() - t0)
    times.sort()
    print(f"median {1e3 * times[len(times) // 2]:.1f} ms over {args.repeats} runs")
    print(f"objective step: {1e3 * times[0]:.1f} ms")


if __name__ == "__main__":
    main()
