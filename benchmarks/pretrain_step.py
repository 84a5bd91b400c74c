"""MAE pretraining step (ViT-B at T = 1024, 80% masked, by default): samples/s, matmul utilisation, PyTorch eager.

    python benchmarks/pretrain_step.py [--batch 2] [--repeats 2] [--size base] [--target-length 1024] [--no-torch]
                                       [--malloc-tuning]
    python benchmarks/pretrain_step.py --replicate   # benchmarks/replicate.py's MAE step ('mini', T = 256, B = 64)
    python benchmarks/pretrain_step.py --smoke       # configs/pretrain_mae.py:test's sizes (T = 128), in seconds

The JAX step is the one pretraining runs: configs/pretrain_mae.py at --size, --target-length and --batch (with
--replicate: the :cpu config as benchmarks/replicate.py trains it), `plan_training` for one device, `pretrain_task`
(MAE's fresh state, AdamW β = (0.9, 0.95), `uamix_jax.train.pretrain_step`: Kaldi fbank, crop, gain, normalise,
patchify, per-clip unstructured masking keeping int(N·0.2) tokens, the encoder on those + cls, the plain decoder on
all N + 1 positions, norm_pix MSE on the masked patches) and `shard_step`, compiled once (`step_bench.py`). Clips hold
exactly T frames (--replicate: the config's 3 s, as it trains). The PyTorch step (skipped by --no-torch and --smoke)
is the same model work in eager mode with torch alone (`uamix_jax.interop.torch_mae.PlainMaskedAutoencoderViT`:
AudioMAE's masking, encoder, decoder and loss, then AdamW with MAE's two param groups); it starts from normalised
fbanks (torch alone has no Kaldi fbank), so it does slightly less work than the JAX step.

utilisation = analytic matmul FLOPs per step / step time / FLOP/s of a float32 jnp.dot of the encoder's fc1 shape in
this step ([B·(1 + n_keep), D] × [D, mlp]) measured in the same run. Counted, per clip: the patch embedding of all N
patches, the encoder blocks on 1 + n_keep tokens, decoder_embed, the decoder blocks on 1 + N tokens, decoder_pred;
training = 3x forward (backward = 2x forward). The last line is the figure, e.g.
`MAE pretrain step (ViT-base, T=1024, 80% masked, B=2): 0.40 samples/s (60% of jnp.dot), torch eager 0.38
samples/s, 1.05x torch`.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # step_bench beside this file

import ml_collections  # noqa: E402

import step_bench as sb  # noqa: E402
from cpu_malloc import is_tuned  # noqa: E402
from uamix_jax.models.mae import MAEDecoder, num_keep  # noqa: E402
from uamix_jax.models.vit import AudioMAEEncoder  # noqa: E402
from uamix_jax.schedules import peak_lr  # noqa: E402
from uamix_jax.train.pretrain import build_mae, pretrain_task  # noqa: E402


def step_flops(batch: int, encoder: AudioMAEEncoder, decoder: MAEDecoder, n_keep: int) -> int:
    """Matmul FLOPs of one training step: 3 x the forward (module docstring)."""
    d, n = encoder.width, encoder.num_patches
    dd = decoder.width
    forward = (2 * n * 256 * d + encoder.depth * sb.block_flops(1 + n_keep, d, encoder.mlp_dim)
               + 2 * (1 + n_keep) * d * dd + decoder.depth * sb.block_flops(1 + n, dd, decoder.mlp_dim)
               + 2 * (1 + n) * dd * 256)
    return 3 * batch * forward


def torch_step(config: ml_collections.ConfigDict, encoder: AudioMAEEncoder, decoder: MAEDecoder, threads: int):
    """The same step in PyTorch eager (module docstring); returns run()."""
    import torch

    from uamix_jax.interop.torch_mae import PlainMaskedAutoencoderViT

    torch.set_num_threads(threads)
    o, batch = config.optim, config.train.global_batch
    model = PlainMaskedAutoencoderViT(
        width=encoder.width, depth=encoder.depth, num_heads=encoder.num_heads, mlp_dim=encoder.mlp_dim,
        target_length=encoder.target_length, decoder_width=decoder.width, decoder_depth=decoder.depth,
        decoder_num_heads=decoder.num_heads, decoder_mlp_dim=decoder.mlp_dim, norm_pix_loss=config.mae.norm_pix_loss)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if p.ndim > 1 and not n.endswith(".bias")],
               "weight_decay": o.weight_decay},
              {"params": [p for n, p in params if p.ndim <= 1 or n.endswith(".bias")], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=peak_lr(o, batch), betas=(o.b1, o.b2), eps=o.eps)
    gen = torch.Generator().manual_seed(0)
    fbank = 0.5 * torch.randn(batch, encoder.target_length, encoder.num_mel_bins, generator=gen)

    def run():
        loss, _, _ = model(fbank, mask_ratio=config.mae.mask_ratio, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run


def main(argv: Sequence[str] | None = None) -> None:
    args = sb.step_args(__doc__, __file__, argv, batch=2, repeats=2, smoke_batch=4, replicate_flag=True)
    threads = os.cpu_count() or 1
    if args.replicate:
        config, _ = sb.replicate_configs("toy" if args.smoke else "default")
    else:
        # --smoke: the :test variant's 2-block, 32-wide decoder beside the 'test' ViT
        config = sb.apply_model_args(sb.load_config("pretrain_mae.py:test" if args.smoke else "pretrain_mae.py"), args)
    encoder, decoder = build_mae(config)
    b, ratio = config.train.global_batch, config.mae.mask_ratio
    n_keep = num_keep(encoder.num_patches, ratio)
    rows, width, mlp = b * (1 + n_keep), encoder.width, encoder.mlp_dim

    peak = sb.dot_rate(rows, width, mlp)
    task = pretrain_task(config, sb.one_device_plan(config))
    batch = sb.synthetic_batch(b, sb.input_samples(config, from_config=args.replicate))
    step = sb.compile_step(config, task, batch, smoke=args.smoke)
    seconds, first_s = sb.time_step(step, args.repeats)
    flops = step_flops(b, encoder, decoder, n_keep)
    print(f"jax: {sb.step_rate(b, seconds, flops, first_s)}; {n_keep} of {encoder.num_patches} tokens visible, "
          f"clips of {batch['waveform'].shape[1]} samples", flush=True)
    del step
    peak = max(peak, sb.dot_rate(rows, width, mlp))  # before and after the step: the machine's load varies
    print(sb.describe_dot(rows, width, mlp, peak) + " (best of before and after); " + sb.machine_line(is_tuned()),
          flush=True)

    line = (f"MAE pretrain step (ViT-{config.model.size}, T={encoder.target_length}, {100 * ratio:.0f}% masked, "
            f"B={b}): {b / seconds:.2f} samples/s ({100 * flops / seconds / peak:.0f}% of jnp.dot)")
    if not args.no_torch:
        import torch

        run_torch = torch_step(config, encoder, decoder, threads)
        run_torch()
        torch_s = sb.best_of(run_torch, args.repeats)
        print(f"torch eager: {torch_s:.3f} s/step ({b / torch_s:.2f} samples/s), "
              f"{flops / torch_s / 1e9:.1f} GFLOP/s, torch {torch.__version__}", flush=True)
        line += f", torch eager {b / torch_s:.2f} samples/s, {torch_s / seconds:.2f}x torch"
    print(line)


if __name__ == "__main__":
    main()
