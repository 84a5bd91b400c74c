"""The fine-tuning step of ViT-B at T = 1024 (AudioMAE's AS-20K recipe): samples/s, matmul utilisation, PyTorch eager.

    python benchmarks/finetune_step.py [--batch 4] [--repeats 3] [--size base] [--no-torch] [--malloc-tuning]

The JAX step is the real one (`uamix_jax.train.finetune_step`): waveform mixup (p = 0.5, groups of 2), Kaldi fbank of
10 s waveforms, random gain + SpecAugment, 2-D token masking (51 × 6 = 306 of 512 tokens), ViT with drop path 0.1,
fc_norm + 527-way head, BCE, gradients of every parameter, AdamW with the 0.75^(L+1−layer) lr groups — jitted over a
1-device mesh. The PyTorch step is the same model work in eager mode with torch alone: the reference fine-tuned
encoder (`uamix_jax.interop.torch_audiomae.VisionTransformer`: fc_norm + head) run on the kept tokens of the same
2-D mask, BCEWithLogitsLoss, AdamW param groups with the same lr scales and weight-decay exemptions; it starts from
precomputed normalised fbanks and has no drop path (no fbank, mixup or SpecAugment: torch alone lacks the fbank), so it
does slightly less work than the JAX step.

utilisation = analytic matmul FLOPs per step / step time / FLOP/s of one big float32 jnp.dot measured in the same
run (`benchmarks/train_step.py`'s helpers). Counted: the patch embedding on all 512 patches, the 12 blocks on 1 + 306
tokens, the head; backward as 2x forward (weight and input gradients), except the patch embedding's (weights only,
1x). The last line is the figure.
"""
from __future__ import annotations

import os
import sys

import numpy as np

try:
    import uamix_jax  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from cpu_malloc import is_tuned  # noqa: E402  (benchmarks/)
from train_step import best_of, block_flops, dot_rate, step_benchmark_args  # noqa: E402  (benchmarks/)
from uamix_jax.models.masking import kept_counts  # noqa: E402
from uamix_jax.models.vit import VIT_SIZES  # noqa: E402

NUM_CLASSES = 527
T, F, P = 1024, 128, 16


def finetune_config(size: str, batch: int):
    """configs/finetune.py:audioset20k at `size` and `batch` (mix groups of 2 so any even batch works)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "finetune.py")
    spec = importlib.util.spec_from_file_location("finetune_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("audioset20k")
    config.model.size = size
    config.train.global_batch = batch
    config.finetune.mix_group = 2
    return config


def step_flops(batch: int, width: int, depth: int, mlp_dim: int) -> int:
    n_t, n_f = kept_counts(T // P, F // P, 0.2, 0.2)
    tokens = 1 + n_t * n_f
    patch = 2 * (T // P) * (F // P) * P * P * width
    forward = depth * block_flops(tokens, width, mlp_dim) + 2 * width * NUM_CLASSES
    return batch * (3 * forward + 2 * patch)


def jax_step(size: str, batch: int):
    from uamix_jax.train.finetune import build_encoder, create_state, options_from_config
    from uamix_jax.train.finetune_step import classifier_head, make_finetune_step
    from uamix_jax.train.step import data_mesh, global_batch, replicate, shard_train_step

    config = finetune_config(size, batch)
    encoder, head = build_encoder(config), classifier_head(NUM_CLASSES)
    state, *_ = create_state(config, encoder, head, 1000, 10, jax.random.key(0))
    mesh = data_mesh(jax.devices()[:1])
    options = options_from_config(config, NUM_CLASSES, multi_hot=True)
    step = shard_train_step(make_finetune_step(encoder, head, options), mesh)
    rng = np.random.default_rng(0)
    n = int(config.data.clip_seconds * 16000)
    data = global_batch({"waveform": (0.1 * rng.standard_normal((batch, n))).astype(np.float32),
                         "length": np.full(batch, n, np.int32), "label": np.zeros(batch, np.int32),
                         "multi_hot": rng.random((batch, NUM_CLASSES)) < 0.01}, mesh)
    key = jax.random.key(1)
    holder = {"state": replicate(state, mesh), "compiled": None}

    def run():
        if holder["compiled"] is None:
            holder["compiled"] = step.lower(holder["state"], data, key).compile()
        holder["state"], metrics = holder["compiled"](holder["state"], data, key)
        jax.block_until_ready(metrics["loss"])

    return run, encoder


def torch_step(size: str, batch: int, threads: int):
    import torch
    from torch import nn

    from uamix_jax.interop.torch_audiomae import VisionTransformer

    torch.set_num_threads(threads)
    width, depth, heads, mlp = VIT_SIZES[size]
    model = VisionTransformer(width=width, depth=depth, num_heads=heads, mlp_dim=mlp, target_length=T,
                              num_classes=NUM_CLASSES)
    decay, no_decay = 5e-4, 0.0
    groups = []

    def add(params, scale):
        params = list(params)
        groups.append({"params": [p for p in params if p.ndim > 1], "lr": 1.25e-4 * scale, "weight_decay": decay})
        groups.append({"params": [p for p in params if p.ndim <= 1], "lr": 1.25e-4 * scale,
                       "weight_decay": no_decay})

    add(model.patch_embed.parameters(), 0.75 ** (depth + 1))
    groups.append({"params": [model.cls_token], "lr": 1.25e-4 * 0.75 ** (depth + 1), "weight_decay": no_decay})
    for i, block in enumerate(model.blocks):
        add(block.parameters(), 0.75 ** (depth - i))
    add(list(model.fc_norm.parameters()) + list(model.head.parameters()), 1.0)
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=1.25e-4, betas=(0.9, 0.999))
    criterion = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(batch, T, F, generator=gen)
    targets = (torch.rand(batch, NUM_CLASSES, generator=gen) < 0.01).float()
    n_t, n_f = kept_counts(T // P, F // P, 0.2, 0.2)

    def run():
        rows = torch.rand(batch, T // P, generator=gen).argsort(1)[:, :n_t].sort(1).values
        cols = torch.rand(batch, F // P, generator=gen).argsort(1)[:, :n_f].sort(1).values
        keep = (rows[:, :, None] * (F // P) + cols[:, None, :]).reshape(batch, -1)
        tokens = model.patch_embed(x.unsqueeze(1)) + model.pos_embed[:, 1:, :]
        tokens = torch.gather(tokens, 1, keep[:, :, None].expand(-1, -1, width))
        z = torch.cat([model.cls_token.expand(batch, -1, -1), tokens], dim=1)
        for block in model.blocks:
            z = block(z)
        logits = model.head(model.fc_norm(z[:, 1:].mean(dim=1)))
        loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run


def main(argv: list[str] | None = None) -> None:
    args = step_benchmark_args(__doc__, __file__, argv, batch=4, repeats=3)
    threads, b = os.cpu_count() or 1, args.batch
    if b % 2:
        sys.exit("finetune_step.py: error: --batch must be even (mixup groups of 2)")

    peak_before = dot_rate(b)
    run, encoder = jax_step(args.size, b)
    run()  # compile + first step
    seconds = best_of(run, args.repeats)
    flops = step_flops(b, encoder.width, encoder.depth, encoder.mlp_dim)
    peak = max(peak_before, dot_rate(b))
    print(f"jax: {seconds:.2f} s/step ({b / seconds:.2f} samples/s), {flops / 1e9:.0f} GFLOP/step, "
          f"{flops / seconds / 1e9:.1f} GFLOP/s; jnp.dot {peak / 1e9:.1f} GFLOP/s; device "
          f"{jax.devices()[0].device_kind}, {threads} cores, jax {jax.__version__}, malloc tuning "
          f"{'on' if is_tuned() else 'off'}", flush=True)
    ratio = ""
    if not args.no_torch:
        import torch

        torch_run = torch_step(args.size, b, threads)
        torch_run()
        torch_s = best_of(torch_run, args.repeats)
        print(f"torch eager: {torch_s:.2f} s/step ({b / torch_s:.2f} samples/s), torch {torch.__version__}",
              flush=True)
        ratio = f", {torch_s / seconds:.2f}x torch"
    print(f"finetune step (ViT-{args.size}, T={T}, B={b}): {b / seconds:.2f} samples/s "
          f"({100 * flops / seconds / peak:.0f}% of jnp.dot){ratio}")


if __name__ == "__main__":
    main()
