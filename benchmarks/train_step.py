"""Stage-1 and stage-2 tuning steps (ViT-B at T = 1024 by default): samples/s, matmul utilisation, PyTorch eager.

    python benchmarks/train_step.py [--batch 4] [--repeats 3] [--size base] [--target-length 1024] [--no-torch]
                                    [--stages 1,2] [--malloc-tuning]
    python benchmarks/train_step.py --replicate      # the 'mini' steps of benchmarks/replicate.py (T = 256, B = 32)
    python benchmarks/train_step.py --smoke          # configs/test.py's tuning (the 'test' ViT, T = 128), B = 4

The JAX step is the one training runs: configs/stage1.py / stage2.py at --size, --target-length and --batch (with
--replicate: the stage configs benchmarks/replicate.py trains), `plan_training` for one device, `tune_task` (fresh
state, stage optimizer groups, `uamix_jax.train.tune_step`: Kaldi fbank, two augmented views, T-CutMix, ViT on both
views, NNCLR head (+ EMA projector in stage 2), NN look-up in the queue, soft NNCLR loss, gradients of the trainable
subtree, AdamW with per-block lr, EMA and queue updates) and `shard_step`, compiled once (`step_bench.py`). Clips hold
exactly T frames (--replicate: the config's 3 s, as it trains). The mix group is chosen as a user fits the config to
a smaller batch: the largest divisor of the per-device batch up to the config's (16: B = 4 → 4, B = 2 → 2,
B = 32 → 16).

The PyTorch step (stage 2; skipped by --no-torch and --smoke) is the same model work in eager mode with torch
alone: the reference AudioMAE encoder (blocks 0..L/2-1, patch embed and cls frozen), the config's NNCLR head
(`NNCLRHeadTorch`) with its EMA projector, queue look-up (top-k), T-CutMix in the same groups, soft NNCLR loss, AdamW
param groups with the layer_decay^(L-i) lr scales; it starts from precomputed normalised views (no fbank, which torch
alone lacks), so it does slightly less work than the JAX step.

utilisation = analytic matmul FLOPs per step / step time / FLOP/s of a float32 jnp.dot of the encoder's fc1 shape in
this step ([2B·(N+1), D] × [D, mlp]) measured in the same run. Counted: the encoder forward on 2B clips (patch embed,
qkv, q·kᵀ, a·v, proj, fc1, fc2), the backward of the trained blocks as 2x their forward, the head (projector,
predictor, EMA projector; backward 2x forward of the online head), and the queue look-ups (2 x B x K x proj_dim).
`--malloc-tuning` re-runs the script with the glibc settings of benchmarks/cpu_malloc.py (both frameworks then run
under them). The last line is the figure, e.g.
`train step (ViT-base, T=1024, B=4): stage 1 0.60 samples/s (88% of jnp.dot), stage 2 0.23 samples/s (67% of
jnp.dot), 0.96x torch`.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # step_bench beside this file

import ml_collections  # noqa: E402

import step_bench as sb  # noqa: E402
from cpu_malloc import is_tuned  # noqa: E402
from uamix_jax.models.vit import VIT_SIZES, AudioMAEEncoder  # noqa: E402
from uamix_jax.train.tune import tune_task  # noqa: E402


def tuning_config(stage: int, size: str | None, target_length: int | None, batch: int, *,
                  smoke: bool = False) -> ml_collections.ConfigDict:
    """configs/stage<stage>.py (smoke: configs/test.py:stage<stage>, the tests' head and queue) at `size`, T and
    `batch` on one device."""
    config = sb.load_config(f"test.py:stage{stage}" if smoke else f"stage{stage}.py")
    if size:
        config.model.size = size
    if target_length:
        config.model.target_length = target_length
    config.train.global_batch = batch
    config.progress = False
    return config


def fit_mix_group(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """mix.group ← the largest divisor of the (one-device) per-device batch up to the config's group."""
    config.mix.group = sb.largest_divisor(config.train.global_batch, config.mix.group)
    return config


def step_flops(config: ml_collections.ConfigDict, encoder: AudioMAEEncoder) -> int:
    """Matmul FLOPs of one tuning step (module docstring)."""
    width, depth, mlp_dim, n_patches = encoder.width, encoder.depth, encoder.mlp_dim, encoder.num_patches
    stage, batch, n = config.stage, config.train.global_batch, n_patches + 1
    h = config.head
    forward = 2 * batch * (depth * sb.block_flops(n, width, mlp_dim) + 2 * n_patches * 256 * width)
    trained = depth - depth // 2
    backward = 0 if stage == 1 else 2 * 2 * batch * trained * sb.block_flops(n, width, mlp_dim)
    projector = 2 * batch * (width * h.proj_hidden_dim + h.proj_hidden_dim ** 2 + h.proj_hidden_dim * h.proj_dim)
    predictor = 2 * batch * (h.proj_dim * h.pred_hidden_dim + h.pred_hidden_dim * h.proj_dim)
    ema = config.nnclr.ema_momentum > 0
    head_flops = 2 * (3 * (projector + predictor)) + (2 * projector if ema else 0)  # per view: fwd + 2x bwd
    lookups = 2 * 2 * batch * config.nnclr.queue_size * h.proj_dim
    return forward + backward + head_flops + lookups


def tuning_step(config: ml_collections.ConfigDict, *, clip_from_config: bool, smoke: bool = False) -> sb.CompiledStep:
    """The compiled tuning step of `config` on one device (clips of the config's length, or exactly T frames)."""
    task = tune_task(config, sb.one_device_plan(config))
    batch = sb.synthetic_batch(config.train.global_batch, sb.input_samples(config, from_config=clip_from_config))
    return sb.compile_step(config, task, batch, smoke=smoke)


def fc1_rows(config: ml_collections.ConfigDict, encoder: AudioMAEEncoder) -> int:
    """Rows the encoder's fc1 sees in one tuning step: 2 views × B clips × (N + 1) tokens."""
    return 2 * config.train.global_batch * (encoder.num_patches + 1)


def torch_stage2_step(config: ml_collections.ConfigDict, threads: int):
    """The stage-2 step of `config` in PyTorch eager (module docstring); returns run()."""
    import torch
    from torch import nn

    from uamix_jax.interop.torch_audiomae import MaskedAutoencoderViT, NNCLRHeadTorch

    torch.set_num_threads(threads)
    width, depth, heads, mlp = VIT_SIZES[config.model.size]
    t, b, h, o = config.model.target_length, config.train.global_batch, config.head, config.optim
    queue_size, top_k, tau, m = (config.nnclr.queue_size, config.nnclr.top_k, config.nnclr.temperature,
                                 config.nnclr.ema_momentum)
    group = config.mix.group
    encoder = MaskedAutoencoderViT(width=width, depth=depth, num_heads=heads, mlp_dim=mlp, target_length=t,
                                   decoder_depth=0)
    for module in (encoder.patch_embed, *encoder.blocks[: depth // 2]):
        module.requires_grad_(False)
    encoder.cls_token.requires_grad_(False)
    head = NNCLRHeadTorch(width, h.proj_hidden_dim, h.proj_dim, h.pred_hidden_dim, ema=True)
    projector, predictor, target = head.projector, head.predictor, head.target_projector.requires_grad_(False)
    groups = [{"params": list(encoder.blocks[i].parameters()), "lr": o.lr * o.layer_decay ** (depth - i),
               "weight_decay": o.weight_decay} for i in range(depth // 2, depth)]
    groups += [{"params": list(encoder.norm.parameters()), "lr": o.lr, "weight_decay": 0.0},
               {"params": list(projector.parameters()) + list(predictor.parameters()), "lr": o.lr,
                "weight_decay": o.head_weight_decay}]
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)
    queue = nn.functional.normalize(torch.randn(queue_size, h.proj_dim), dim=1)
    queue_ids = torch.full((queue_size,), -1)
    ptr = [0]
    gen = torch.Generator().manual_seed(0)
    view_a, view_b = (0.5 * torch.randn(b, t, 128, generator=gen) for _ in range(2))
    ids = torch.arange(b)
    partner = (ids - ids % group + group - 1 - ids % group)  # each group reversed, as the JAX step pairs clips
    swap = torch.eye(b)[partner]

    def lookup(z):
        sim = nn.functional.normalize(z, dim=1) @ queue.T
        sim[queue_ids[None, :] == ids[:, None]] = -float("inf")
        top = sim.topk(top_k, dim=1).indices
        pick = torch.randint(0, top_k, (b,), generator=gen)
        return queue[top[torch.arange(b), pick]]

    def run():
        lam = float(torch.distributions.Beta(1.0, 1.0).sample())
        w = int(round(t * (1 - lam) ** 0.5))
        s = int(torch.randint(0, t, (1,), generator=gen))
        e = min(s + w, t)
        mixed = view_a.clone()
        mixed[:, s:e] = view_a[partner][:, s:e]
        keep = 1 - (e - s) / t
        y = keep * torch.eye(b) + (1 - keep) * swap
        _, emb = encoder(torch.cat([mixed, view_b]))
        emb_a, emb_b = emb[:b], emb[b:]
        p_a, p_b = predictor(projector(emb_a)), predictor(projector(emb_b))
        with torch.no_grad():
            z_a, z_b = target(emb_a), target(emb_b)
            nn_a, nn_b = lookup(z_a), lookup(z_b)
        pa, pb = nn.functional.normalize(p_a, dim=1), nn.functional.normalize(p_b, dim=1)
        loss = 0.5 * (-(y.T * (nn_b @ pa.T / tau).log_softmax(1)).sum(1).mean()
                      - (y * (nn_a @ pb.T / tau).log_softmax(1)).sum(1).mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for tp, op in zip(target.parameters(), projector.parameters()):
                tp.mul_(m).add_(op, alpha=1 - m)
            rows = (ptr[0] + torch.arange(b)) % queue_size
            queue[rows] = nn.functional.normalize(z_b, dim=1)
            queue_ids[rows] = ids
            ptr[0] = (ptr[0] + b) % queue_size

    return run


def main(argv: Sequence[str] | None = None) -> None:
    args = sb.step_args(__doc__, __file__, argv, batch=4, repeats=3, smoke_batch=4, replicate_flag=True,
                        add=lambda p: p.add_argument("--stages", default="1,2"))
    threads = os.cpu_count() or 1
    stages = [int(s) for s in args.stages.split(",")]
    if args.replicate:
        _, by_stage = sb.replicate_configs("toy" if args.smoke else "default")
        configs = {s: by_stage[s] for s in stages}
    else:
        configs = {s: tuning_config(s, args.size, args.target_length, args.batch, smoke=args.smoke) for s in stages}
    configs = {s: fit_mix_group(c) for s, c in configs.items()}
    first = configs[stages[0]]
    encoder = AudioMAEEncoder.from_config(first.model)
    size, t, b = first.model.size, encoder.target_length, first.train.global_batch
    rows, width, mlp = fc1_rows(first, encoder), encoder.width, encoder.mlp_dim

    peak = sb.dot_rate(rows, width, mlp)
    results = {}
    for stage, config in configs.items():
        step = tuning_step(config, clip_from_config=args.replicate, smoke=args.smoke)
        seconds, first_s = sb.time_step(step, args.repeats)
        flops = step_flops(config, encoder)
        results[stage] = (seconds, flops)
        print(f"stage {stage}: {sb.step_rate(b, seconds, flops, first_s)}; mix group {config.mix.group}, "
              f"queue {config.nnclr.queue_size}, clips of {step.data['waveform'].shape[1]} samples", flush=True)
        del step
    peak = max(peak, sb.dot_rate(rows, width, mlp))  # before and after the steps: the machine's load varies
    print(sb.describe_dot(rows, width, mlp, peak) + " (best of before and after); " + sb.machine_line(is_tuned()),
          flush=True)

    ratio = ""
    if 2 in results and not args.no_torch:
        import torch

        run = torch_stage2_step(configs[2], threads)
        run()
        torch_s = sb.best_of(run, args.repeats)
        print(f"torch eager stage 2: {torch_s:.3f} s/step ({b / torch_s:.2f} samples/s), torch {torch.__version__}",
              flush=True)
        ratio = f", {torch_s / results[2][0]:.2f}x torch"
    parts = [f"stage {s} {b / sec:.2f} samples/s ({100 * fl / sec / peak:.0f}% of jnp.dot)"
             for s, (sec, fl) in results.items()]
    print(f"train step (ViT-{size}, T={t}, B={b}): " + ", ".join(parts) + ratio)


if __name__ == "__main__":
    main()
