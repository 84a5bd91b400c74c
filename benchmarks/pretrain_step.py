"""MAE pretraining step of ViT-B at T = 1024 (80% masked): samples/s, matmul utilisation, and PyTorch eager.

    python benchmarks/pretrain_step.py [--batch 2] [--repeats 2] [--size base] [--no-torch] [--malloc-tuning]

The JAX step is the real one (`uamix_jax.train.pretrain.make_pretrain_step`: Kaldi fbank of 10 s waveforms, crop,
gain, normalise, patchify, per-clip unstructured masking keeping 102 of 512 tokens, the encoder on those + cls,
the plain decoder (512 wide, 8 blocks, 16 heads) on all 513 positions, norm_pix MSE on the masked patches, AdamW
β = (0.9, 0.95), wd 1e-4), jitted over a 1-device mesh. The PyTorch step is the same model work in eager mode with
torch alone (`uamix_jax.interop.torch_mae.PlainMaskedAutoencoderViT`: AudioMAE's masking, encoder, decoder and loss,
then AdamW with MAE's two param groups); it starts from normalised fbanks (torch alone has no Kaldi fbank), so it
does slightly less work than the JAX step.

utilisation = analytic matmul FLOPs per step / step time / FLOP/s of one big float32 jnp.dot measured in the same
run (benchmarks/train_step.py's `dot_rate`). Counted, per clip: the patch embedding of all N patches, the encoder
blocks on 1 + n_keep tokens, decoder_embed, the decoder blocks on 1 + N tokens, decoder_pred; training = 3x forward
(backward = 2x forward). The last line is the figure, e.g.
`MAE pretrain step (ViT-base, T=1024, 80% masked, B=2): 0.40 samples/s (60%), torch eager 0.38 samples/s, 1.05x torch`.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

try:
    import uamix_jax  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from uamix_jax.models.mae import num_keep  # noqa: E402
from uamix_jax.train.pretrain import build_mae, create_state, make_pretrain_step, pretrain_options  # noqa: E402
from uamix_jax.train.step import data_mesh, global_batch, replicate, shard_train_step  # noqa: E402

from cpu_malloc import is_tuned  # noqa: E402  (benchmarks/)
from train_step import best_of, block_flops, dot_rate, step_benchmark_args  # noqa: E402  (benchmarks/)

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "pretrain_mae.py")


def load_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pretrain_mae_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def step_flops(batch: int, enc: tuple[int, int, int], dec: tuple[int, int, int], n_patches: int,
               n_keep: int) -> int:
    """Matmul FLOPs of one training step: 3 x the forward (module docstring). enc/dec = (width, depth, mlp_dim)."""
    (d, depth, mlp), (dd, ddepth, dmlp) = enc, dec
    forward = (2 * n_patches * 256 * d + depth * block_flops(1 + n_keep, d, mlp) + 2 * (1 + n_keep) * d * dd
               + ddepth * block_flops(1 + n_patches, dd, dmlp) + 2 * (1 + n_patches) * dd * 256)
    return 3 * batch * forward


def jax_step(size: str, batch: int):
    config = load_config()
    config.model.size = size
    config.train.global_batch = batch
    encoder, decoder = build_mae(config)
    state, _ = create_state(config, encoder, decoder, 1000, jax.random.key(0))
    mesh = data_mesh(jax.devices()[:1])
    step = shard_train_step(make_pretrain_step(encoder, decoder, pretrain_options(config)), mesh)
    n = int(config.data.clip_seconds * 16000)
    wave = (0.1 * np.random.default_rng(0).standard_normal((batch, n))).astype(np.float32)
    data = global_batch({"waveform": wave, "length": np.full(batch, n, np.int32)}, mesh)
    key = jax.random.key(1)
    holder = {"state": replicate(state, mesh)}

    def run():
        holder["state"], metrics = step(holder["state"], data, key)
        jax.block_until_ready(metrics["loss"])

    return run, encoder, decoder


def torch_step(encoder, decoder, batch: int, threads: int):
    import torch

    from uamix_jax.interop.torch_mae import PlainMaskedAutoencoderViT

    torch.set_num_threads(threads)
    model = PlainMaskedAutoencoderViT(
        width=encoder.width, depth=encoder.depth, num_heads=encoder.num_heads, mlp_dim=encoder.mlp_dim,
        target_length=encoder.target_length, decoder_width=decoder.width, decoder_depth=decoder.depth,
        decoder_num_heads=decoder.num_heads, decoder_mlp_dim=decoder.mlp_dim)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if p.ndim > 1 and not n.endswith(".bias")], "weight_decay": 1e-4},
              {"params": [p for n, p in params if p.ndim <= 1 or n.endswith(".bias")], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=4e-4, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(0)
    fbank = 0.5 * torch.randn(batch, encoder.target_length, encoder.num_mel_bins, generator=gen)

    def run():
        loss, _, _ = model(fbank, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run


def main(argv: list[str] | None = None) -> None:
    args = step_benchmark_args(__doc__, __file__, argv, batch=2, repeats=2)
    threads = os.cpu_count() or 1
    b = args.batch

    peak_before = dot_rate(b)
    run, encoder, decoder = jax_step(args.size, b)
    start = time.perf_counter()
    run()  # compile + first step
    compile_s = time.perf_counter() - start
    seconds = best_of(run, args.repeats)
    n_keep = num_keep(encoder.num_patches)
    flops = step_flops(b, (encoder.width, encoder.depth, encoder.mlp_dim),
                       (decoder.width, decoder.depth, decoder.mlp_dim), encoder.num_patches, n_keep)
    print(f"jax: {seconds:.2f} s/step ({b / seconds:.2f} samples/s), {flops / 1e9:.0f} GFLOP/step, "
          f"{flops / seconds / 1e9:.1f} GFLOP/s, compile+first step {compile_s:.0f} s; {n_keep} of "
          f"{encoder.num_patches} tokens visible", flush=True)
    peak = max(peak_before, dot_rate(b))  # before and after the step: the machine's load varies
    print(f"jnp.dot [{2 * b * 513}, 768] x [768, 3072]: {peak / 1e9:.1f} GFLOP/s (best of before and after); "
          f"device {jax.devices()[0].device_kind}, {threads} cores, jax {jax.__version__}, "
          f"malloc tuning {'on' if is_tuned() else 'off'}", flush=True)

    line = (f"MAE pretrain step (ViT-{args.size}, T={encoder.target_length}, 80% masked, B={b}): "
            f"{b / seconds:.2f} samples/s ({100 * flops / seconds / peak:.0f}%)")
    if not args.no_torch:
        import torch

        run_torch = torch_step(encoder, decoder, b, threads)
        run_torch()
        torch_s = best_of(run_torch, args.repeats)
        print(f"torch eager: {torch_s:.2f} s/step ({b / torch_s:.2f} samples/s), "
              f"{flops / torch_s / 1e9:.1f} GFLOP/s, torch {torch.__version__}", flush=True)
        line += f", torch eager {b / torch_s:.2f} samples/s, {torch_s / seconds:.2f}x torch"
    print(line)


if __name__ == "__main__":
    main()
