"""Stage-1 and stage-2 training steps of ViT-B at T = 1024: samples/s, matmul utilisation, and PyTorch eager.

    python benchmarks/train_step.py [--batch 4] [--repeats 3] [--size base] [--no-torch] [--stages 1,2]
                                    [--malloc-tuning]

The JAX step is the real one (`uamix_jax.train.step`: Kaldi fbank of 10 s waveforms, two augmented views, T-CutMix,
ViT on both views, NNCLR head + EMA projector, NN look-up in a 65,536-row queue, soft NNCLR loss, gradients of the
trainable subtree, AdamW with per-block lr, EMA and queue updates), jitted over a 1-device mesh. The PyTorch step is
the same model work in eager mode with torch alone: the reference AudioMAE encoder (blocks 0-5, patch embed and cls
frozen), the same head, EMA projector, queue look-up (top-20), soft NNCLR loss, AdamW param groups with the
0.65^(L-i) lr scales; it starts from precomputed normalised views (no fbank, which torch alone lacks), so it does
slightly less work than the JAX step.

utilisation = analytic matmul FLOPs per step / step time / FLOP/s of one big float32 jnp.dot measured in the same run.
Counted: the encoder forward on 2B clips (patch embed, qkv, q·kᵀ, a·v, proj, fc1, fc2), the backward of the trained
blocks as 2x their forward, the head (projector, predictor, EMA projector; backward 2x forward of the online head),
and the queue look-ups (2 x B x K x 256). `--malloc-tuning` re-runs the script with the glibc settings of
benchmarks/cpu_malloc.py (both frameworks then run under them). The last line is the figure, e.g.
`train step (ViT-base, B=4): stage 1 0.60 samples/s (88%), stage 2 0.23 samples/s (67%), 0.96x torch` (measured here,
2 cores, malloc tuning).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from typing import Callable

import numpy as np

try:
    import uamix_jax  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from uamix_jax.train import build, optim  # noqa: E402
from uamix_jax.train.config_base import base_config  # noqa: E402
from uamix_jax.train.build import step_options  # noqa: E402
from uamix_jax.train.step import data_mesh, global_batch, make_train_step, replicate, shard_train_step  # noqa: E402

from cpu_malloc import is_tuned, reexec_with_malloc_tuning  # noqa: E402  (benchmarks/)

QUEUE = 65536


def block_flops(n: int, width: int, mlp_dim: int) -> int:
    """Matmul FLOPs of one transformer block on n tokens (2 per multiply-add)."""
    return 2 * n * width * 3 * width + 2 * 2 * n * n * width + 2 * n * width * width + 2 * 2 * n * width * mlp_dim


def step_flops(stage: int, batch: int, width: int, depth: int, mlp_dim: int, n_patches: int, head: tuple,
               queue: int = QUEUE) -> int:
    n = n_patches + 1
    proj_hidden, proj_dim, pred_hidden = head
    forward = 2 * batch * (depth * block_flops(n, width, mlp_dim) + 2 * n_patches * 256 * width)
    backward = 0 if stage == 1 else 2 * 2 * batch * (depth // 2) * block_flops(n, width, mlp_dim)
    projector = 2 * batch * (width * proj_hidden + proj_hidden * proj_hidden + proj_hidden * proj_dim)
    predictor = 2 * batch * (proj_dim * pred_hidden + pred_hidden * proj_dim)
    head_flops = 2 * (3 * (projector + predictor)) + (2 * projector if stage == 2 else 0)  # per view: fwd + 2x bwd
    lookups = 2 * 2 * batch * queue * proj_dim
    return forward + backward + head_flops + lookups


def jax_step(stage: int, size: str, batch: int):
    config = base_config()
    config.stage = stage
    config.model.size = size
    config.train.global_batch = batch
    config.nnclr.update(queue_size=QUEUE, top_k=1 if stage == 1 else 20, ema_momentum=0.0 if stage == 1 else 0.99)
    encoder, head = build.build_models(config)
    state, labels, _ = build.create_state(config, encoder, head, 1000, jax.random.key(0))
    mesh = data_mesh(jax.devices()[:1])
    step = shard_train_step(make_train_step(encoder, head, step_options(config), optim.trainable_mask(labels)), mesh)
    rng = np.random.default_rng(0)
    n = int(config.data.clip_seconds * 16000)
    batch_np = {"waveform": (0.1 * rng.standard_normal((batch, n))).astype(np.float32),
                "length": np.full(batch, n, np.int32), "index": np.arange(batch, dtype=np.int32),
                "label": np.zeros(batch, np.int32)}
    data = global_batch(batch_np, mesh)
    key = jax.random.key(1)
    holder = {"state": replicate(state, mesh), "compiled": None}

    def run():
        if holder["compiled"] is None:  # compiled once, on the first call; its HLO serves profile_train_step.py
            holder["compiled"] = step.lower(holder["state"], data, key).compile()
        holder["state"], metrics = holder["compiled"](holder["state"], data, key)
        jax.block_until_ready(metrics["loss"])

    run.hlo_text = lambda: holder["compiled"].as_text()
    return run, encoder, config


def torch_stage2_step(size: str, batch: int, threads: int):
    import torch
    from torch import nn

    from uamix_jax.interop.torch_audiomae import MaskedAutoencoderViT
    from uamix_jax.models.vit import VIT_SIZES

    torch.set_num_threads(threads)
    width, depth, heads, mlp = VIT_SIZES[size]
    encoder = MaskedAutoencoderViT(width=width, depth=depth, num_heads=heads, mlp_dim=mlp, target_length=1024,
                                   decoder_depth=0)
    frozen = [encoder.patch_embed, *encoder.blocks[: depth // 2]]
    for module in frozen:
        module.requires_grad_(False)
    encoder.cls_token.requires_grad_(False)

    def mlp_head(dims, last_bn):
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b, bias=False))
            if i < len(dims) - 2:
                layers += [nn.BatchNorm1d(b), nn.ReLU()]
        if last_bn:
            layers.append(nn.BatchNorm1d(dims[-1]))
        return nn.Sequential(*layers)

    projector = mlp_head([width, 2048, 2048, 256], True)
    predictor = mlp_head([256, 4096, 256], False)
    target = copy.deepcopy(projector).requires_grad_(False)
    groups = [{"params": [p for p in encoder.blocks[i].parameters()], "lr": 1e-4 * 0.65 ** (depth - i),
               "weight_decay": 0.05} for i in range(depth // 2, depth)]
    groups += [{"params": list(encoder.norm.parameters()), "lr": 1e-4, "weight_decay": 0.0},
               {"params": list(projector.parameters()) + list(predictor.parameters()), "lr": 1e-4,
                "weight_decay": 1e-5}]
    optimizer = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95))
    queue = nn.functional.normalize(torch.randn(QUEUE, 256), dim=1)
    queue_ids = torch.full((QUEUE,), -1)
    ptr = [0]
    gen = torch.Generator().manual_seed(0)
    view_a, view_b = (0.5 * torch.randn(batch, 1024, 128, generator=gen) for _ in range(2))
    ids = torch.arange(batch)

    def lookup(z):
        sim = nn.functional.normalize(z, dim=1) @ queue.T
        sim[queue_ids[None, :] == ids[:, None]] = -float("inf")
        top = sim.topk(20, dim=1).indices
        pick = torch.randint(0, 20, (batch,), generator=gen)
        return queue[top[torch.arange(batch), pick]]

    def run():
        lam = float(torch.distributions.Beta(1.0, 1.0).sample())
        w = int(round(1024 * (1 - lam) ** 0.5))
        s = int(torch.randint(0, 1024, (1,), generator=gen))
        e = min(s + w, 1024)
        mixed = view_a.clone()
        mixed[:, s:e] = view_a.flip(0)[:, s:e]
        keep = 1 - (e - s) / 1024
        y = keep * torch.eye(batch) + (1 - keep) * torch.eye(batch).flip(0)
        _, emb = encoder(torch.cat([mixed, view_b]))
        emb_a, emb_b = emb[:batch], emb[batch:]
        p_a, p_b = predictor(projector(emb_a)), predictor(projector(emb_b))
        with torch.no_grad():
            z_a, z_b = target(emb_a), target(emb_b)
            nn_a, nn_b = lookup(z_a), lookup(z_b)
        pa, pb = nn.functional.normalize(p_a, dim=1), nn.functional.normalize(p_b, dim=1)
        loss = 0.5 * (-(y.T * (nn_b @ pa.T / 0.15).log_softmax(1)).sum(1).mean()
                      - (y * (nn_a @ pb.T / 0.15).log_softmax(1)).sum(1).mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for t, o in zip(target.parameters(), projector.parameters()):
                t.mul_(0.99).add_(o, alpha=0.01)
            queue[ptr[0]:ptr[0] + batch] = nn.functional.normalize(z_b, dim=1)
            queue_ids[ptr[0]:ptr[0] + batch] = ids
            ptr[0] = (ptr[0] + batch) % QUEUE

    return run


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def dot_rate(batch: int) -> float:
    """FLOP/s of one jitted float32 jnp.dot [2·batch·513, 768] x [768, 3072] (fc1's shape), best of 5."""
    n = batch * 2 * 513
    lhs = jnp.asarray(np.random.default_rng(1).standard_normal((n, 768)), jnp.float32)
    rhs = jnp.asarray(np.random.default_rng(2).standard_normal((768, 3072)), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(lhs, rhs))
    return 2 * n * 768 * 3072 / best_of(lambda: jax.block_until_ready(dot(lhs, rhs)), 5)


def step_benchmark_args(doc: str, script: str, argv: list[str] | None, *, batch: int, repeats: int,
                        add: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The flags every step benchmark takes (--size, --batch, --repeats, --no-torch, --malloc-tuning, plus `add`'s);
    with --malloc-tuning the process re-executes `script` under cpu_malloc.py's settings first."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--malloc-tuning", action="store_true", help="re-run with benchmarks/cpu_malloc.py's settings")
    if add is not None:
        add(parser)
    args = parser.parse_args(argv)
    if args.malloc_tuning:
        reexec_with_malloc_tuning(script, argv or sys.argv[1:])
    return args


def main(argv: list[str] | None = None) -> None:
    args = step_benchmark_args(__doc__, __file__, argv, batch=4, repeats=3,
                               add=lambda p: p.add_argument("--stages", default="1,2"))
    threads = os.cpu_count() or 1
    b = args.batch

    peak_before = dot_rate(b)
    results = {}
    for stage in (int(s) for s in args.stages.split(",")):
        run, encoder, config = jax_step(stage, args.size, b)
        start = time.perf_counter()
        run()  # compile + first step
        compile_s = time.perf_counter() - start
        seconds = best_of(run, args.repeats)
        head = (config.head.proj_hidden_dim, config.head.proj_dim, config.head.pred_hidden_dim)
        flops = step_flops(stage, b, encoder.width, encoder.depth, encoder.mlp_dim, encoder.num_patches, head)
        results[stage] = (seconds, flops)
        print(f"stage {stage}: {seconds:.2f} s/step ({b / seconds:.2f} samples/s), {flops / 1e9:.0f} GFLOP/step, "
              f"{flops / seconds / 1e9:.1f} GFLOP/s, compile+first step {compile_s:.0f} s", flush=True)

    peak = max(peak_before, dot_rate(b))  # before and after the steps: the machine's load varies
    print(f"jnp.dot [{2 * b * 513}, 768] x [768, 3072]: {peak / 1e9:.1f} GFLOP/s (best of before and after); "
          f"device {jax.devices()[0].device_kind}, {threads} cores, jax {jax.__version__}, malloc tuning {'on' if is_tuned() else 'off'}")

    ratio = ""
    if 2 in results and not args.no_torch:
        import torch

        run = torch_stage2_step(args.size, b, threads)
        run()
        torch_s = best_of(run, args.repeats)
        print(f"torch eager stage 2: {torch_s:.2f} s/step ({b / torch_s:.2f} samples/s), torch {torch.__version__}")
        ratio = f", {torch_s / results[2][0]:.2f}x torch"
    parts = [f"stage {s} {b / sec:.2f} samples/s ({100 * fl / sec / peak:.0f}%)" for s, (sec, fl) in results.items()]
    print(f"train step (ViT-{args.size}, B={b}): " + ", ".join(parts) + ratio)


if __name__ == "__main__":
    main()
