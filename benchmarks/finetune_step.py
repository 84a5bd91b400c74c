"""The fine-tuning step (ViT-B at T = 1024, AudioMAE's AS-20K recipe, by default): samples/s, matmul utilisation,
PyTorch eager.

    python benchmarks/finetune_step.py [--batch 4] [--repeats 3] [--size base] [--target-length 1024] [--no-torch]
                                       [--malloc-tuning]
    python benchmarks/finetune_step.py --smoke       # the 'test' ViT at T = 128 in seconds

The JAX step is the one fine-tuning runs: configs/finetune.py:audioset20k at --size, --target-length and --batch,
`plan_training` for one device, `finetune_task` over 527 classes with multi-hot targets (fresh encoder with fc_norm
and drop path 0.1, linear head, AdamW with the layer_decay^(L+1−layer) lr groups; `uamix_jax.train.finetune_step`:
waveform mixup (p = 0.5), Kaldi fbank, random gain + SpecAugment, 2-D token masking (int(T'·0.8) × int(F'·0.8) of
T' × F' tokens), ViT, fc_norm + head, BCE, gradients of every parameter) and `shard_step`, compiled once
(`step_bench.py`). Clips hold exactly T frames. The mixup group is chosen as a user fits the config to a smaller
batch: the largest divisor of the per-device batch up to the config's 4 (it must be at least 2). The PyTorch step
(skipped by --no-torch and --smoke) is the same model work in eager mode with torch alone: the reference fine-tuned
encoder (`uamix_jax.interop.torch_audiomae.VisionTransformer`: fc_norm + head) run on the kept tokens of the same
2-D mask, BCEWithLogitsLoss, AdamW param groups with the same lr scales and weight-decay exemptions; it starts from
precomputed normalised fbanks and has no drop path (no fbank, mixup or SpecAugment: torch alone lacks the fbank), so
it does slightly less work than the JAX step.

utilisation = analytic matmul FLOPs per step / step time / FLOP/s of a float32 jnp.dot of the encoder's fc1 shape in
this step ([B·(1 + kept), D] × [D, mlp]) measured in the same run. Counted: the patch embedding on all N patches, the
blocks on 1 + kept tokens, the head; backward as 2x forward (weight and input gradients), except the patch
embedding's (weights only, 1x). The last line is the figure, e.g.
`finetune step (ViT-base, T=1024, B=4): 0.32 samples/s (45% of jnp.dot), 2.00x torch`.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # step_bench beside this file

import ml_collections  # noqa: E402

import step_bench as sb  # noqa: E402
from cpu_malloc import is_tuned  # noqa: E402
from uamix_jax.models.masking import kept_counts  # noqa: E402
from uamix_jax.models.vit import AudioMAEEncoder  # noqa: E402
from uamix_jax.schedules import peak_lr  # noqa: E402
from uamix_jax.train.finetune import finetune_task  # noqa: E402

NUM_CLASSES = 527  # AudioSet


def finetune_config(args) -> ml_collections.ConfigDict:
    """configs/finetune.py:audioset20k at the flags' size, T and batch, its mixup group fitted to the batch."""
    config = sb.apply_model_args(sb.load_config("finetune.py:audioset20k"), args)
    if config.finetune.mixup_prob > 0:
        group = sb.largest_divisor(config.train.global_batch, config.finetune.mix_group)
        if group < 2:
            raise SystemExit(f"finetune_step.py: --batch {config.train.global_batch} has no divisor in 2.."
                             f"{config.finetune.mix_group} for the mixup groups; use an even batch")
        config.finetune.mix_group = group
    return config


def kept_tokens(config: ml_collections.ConfigDict, encoder: AudioMAEEncoder) -> int:
    """Patch tokens a clip keeps after the 2-D token masking."""
    a, p = config.augment, encoder.patch_size
    n_t, n_f = kept_counts(encoder.target_length // p, encoder.num_mel_bins // p, a.mask_t_prob, a.mask_f_prob)
    return n_t * n_f


def step_flops(batch: int, encoder: AudioMAEEncoder, kept: int) -> int:
    """Matmul FLOPs of one step (module docstring)."""
    patch = 2 * encoder.num_patches * encoder.patch_size ** 2 * encoder.width
    forward = encoder.depth * sb.block_flops(1 + kept, encoder.width, encoder.mlp_dim) + 2 * encoder.width * NUM_CLASSES
    return batch * (3 * forward + 2 * patch)


def torch_step(config: ml_collections.ConfigDict, encoder: AudioMAEEncoder, threads: int):
    """The same step in PyTorch eager (module docstring); returns run()."""
    import torch
    from torch import nn

    from uamix_jax.interop.torch_audiomae import VisionTransformer

    torch.set_num_threads(threads)
    o, a, batch = config.optim, config.augment, config.train.global_batch
    t, f, p, depth, width = (encoder.target_length, encoder.num_mel_bins, encoder.patch_size, encoder.depth,
                             encoder.width)
    model = VisionTransformer(width=width, depth=depth, num_heads=encoder.num_heads, mlp_dim=encoder.mlp_dim,
                              target_length=t, num_classes=NUM_CLASSES)
    lr, decay = peak_lr(o, batch), o.weight_decay
    groups = []

    def add(params, scale):
        params = list(params)
        groups.append({"params": [q for q in params if q.ndim > 1], "lr": lr * scale, "weight_decay": decay})
        groups.append({"params": [q for q in params if q.ndim <= 1], "lr": lr * scale, "weight_decay": 0.0})

    add(model.patch_embed.parameters(), o.layer_decay ** (depth + 1))
    groups.append({"params": [model.cls_token], "lr": lr * o.layer_decay ** (depth + 1), "weight_decay": 0.0})
    for i, block in enumerate(model.blocks):
        add(block.parameters(), o.layer_decay ** (depth - i))
    add(list(model.fc_norm.parameters()) + list(model.head.parameters()), 1.0)
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(o.b1, o.b2), eps=o.eps)
    criterion = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(batch, t, f, generator=gen)
    targets = (torch.rand(batch, NUM_CLASSES, generator=gen) < 0.01).float()
    n_t, n_f = kept_counts(t // p, f // p, a.mask_t_prob, a.mask_f_prob)

    def run():
        rows = torch.rand(batch, t // p, generator=gen).argsort(1)[:, :n_t].sort(1).values
        cols = torch.rand(batch, f // p, generator=gen).argsort(1)[:, :n_f].sort(1).values
        keep = (rows[:, :, None] * (f // p) + cols[:, None, :]).reshape(batch, -1)
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


def main(argv: Sequence[str] | None = None) -> None:
    args = sb.step_args(__doc__, __file__, argv, batch=4, repeats=3, smoke_batch=4)
    threads = os.cpu_count() or 1
    config = finetune_config(args)
    b = config.train.global_batch
    encoder = AudioMAEEncoder.from_config(config.model)
    kept = kept_tokens(config, encoder)
    rows, width, mlp = b * (1 + kept), encoder.width, encoder.mlp_dim

    peak = sb.dot_rate(rows, width, mlp)
    task = finetune_task(config, sb.one_device_plan(config), NUM_CLASSES, multi_hot=True)
    step = sb.compile_step(config, task, sb.synthetic_batch(b, sb.input_samples(config, from_config=False),
                                                            num_classes=NUM_CLASSES), smoke=args.smoke)
    seconds, first_s = sb.time_step(step, args.repeats)
    del step
    flops = step_flops(b, encoder, kept)
    peak = max(peak, sb.dot_rate(rows, width, mlp))  # before and after the step: the machine's load varies
    print(f"jax: {sb.step_rate(b, seconds, flops, first_s)}; {kept} of {encoder.num_patches} tokens kept, "
          f"mixup groups of {config.finetune.mix_group}", flush=True)
    print(sb.describe_dot(rows, width, mlp, peak) + " (best of before and after); " + sb.machine_line(is_tuned()),
          flush=True)
    ratio = ""
    if not args.no_torch:
        import torch

        torch_run = torch_step(config, encoder, threads)
        torch_run()
        torch_s = sb.best_of(torch_run, args.repeats)
        print(f"torch eager: {torch_s:.3f} s/step ({b / torch_s:.2f} samples/s), torch {torch.__version__}",
              flush=True)
        ratio = f", {torch_s / seconds:.2f}x torch"
    print(f"finetune step (ViT-{config.model.size}, T={encoder.target_length}, B={b}): {b / seconds:.2f} samples/s "
          f"({100 * flops / seconds / peak:.0f}% of jnp.dot){ratio}")


if __name__ == "__main__":
    main()
