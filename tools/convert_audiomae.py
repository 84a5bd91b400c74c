#!/usr/bin/env python3
"""Convert AudioMAE weights (AudioMAE's or timm's; a PyTorch file, .safetensors, or a hub name) into a uamix-jax
encoder directory.

    python tools/convert_audiomae.py --input ckpt/pretrained.pth --output ckpt/audiomae_as2m [--check]
    python tools/convert_audiomae.py --input hf-hub:gaunernst/vit_base_patch16_1024_128.audiomae_as2m --output DIR

--input: a PyTorch file of any name (.pth, .pt, .bin; weights bare or under 'model' / 'state_dict'), a .safetensors
file, or hf-hub:ORG/NAME[@REVISION] (the Hugging Face cache; offline once downloaded). Key layouts: `norm` or
`fc_norm`, with or without `head`, with or without AudioMAE's decoder (docs/interop.md).

Writes OUTPUT/variables (orbax checkpoint of the Flax encoder variables) and OUTPUT/audiomae.json (model size,
dims, pooling, format, source file, keys dropped). Load it with `uamix_jax.load_audiomae(OUTPUT)`.
`--check` also runs AudioMAE's encoder in PyTorch (uamix_jax.interop.torch_audiomae) and the converted Flax
encoder (the checkpoint's own T and positional table, float32 matmuls: precision 'highest') on the same random
input and prints the largest absolute differences; it exits with status 1 when one exceeds --tolerance. Errors
(unreadable file, missing / unexpected / mis-shaped keys) exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

try:
    import uamix_jax  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="convert_audiomae.py",
        description="Convert AudioMAE weights (AudioMAE's or timm's key layout; .pth/.pt/.bin, .safetensors or "
                    "hf-hub:ORG/NAME[@REVISION]) into a Flax/orbax encoder directory for uamix-jax.",
        epilog="Example: python tools/convert_audiomae.py --input pretrained.pth --output audiomae_as2m --check",
    )
    parser.add_argument("--input", required=True,
                        help="AudioMAE weights: .pth/.pt/.bin (bare, or under 'model' / 'state_dict'), .safetensors, "
                             "or hf-hub:ORG/NAME[@REVISION]")
    parser.add_argument("--output", required=True, help="directory to write (variables/ + audiomae.json)")
    parser.add_argument("--check", action="store_true",
                        help="run the PyTorch reference and the converted Flax encoder on the same random input "
                             "and print the largest absolute differences of tokens and embedding")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="--check fails (exit 1) above this max |difference| (default: 1e-4, float32)")
    parser.add_argument("--batch", type=int, default=2, help="--check batch size (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="--check input seed (default: 0)")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="attention heads (not stored in the file; default: the named size with this width, "
                             "else width/64)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing conversion in --output")
    return parser.parse_args(argv)


def _say(message: str) -> None:
    print(message, flush=True)


def _check(state_dict: dict, output: str, info: dict, batch: int, seed: int) -> tuple[float, float]:
    """Max |Δ| of tokens and embedding between the torch reference (from the .pth) and Flax (from `output`)."""
    import jax
    import jax.numpy as jnp
    import torch

    from uamix_jax.interop.audiomae import load_audiomae
    from uamix_jax.interop.torch_audiomae import reference_from_state_dict

    model = reference_from_state_dict(state_dict, info)
    encoder, variables = load_audiomae(output)  # the checkpoint's own T and positional table
    # Normalised fbanks have std ≈ 0.5 (AudioMAE divides by 2 std).
    x = (0.5 * np.random.default_rng(seed).standard_normal(
        (batch, encoder.target_length, encoder.num_mel_bins))).astype(np.float32)
    with torch.no_grad():
        ref_tokens, ref_embedding = (t.numpy() for t in model(torch.from_numpy(x)))
    # true float32 matmuls: TPUs default to bf16 passes and A100/H100 to TF32
    with jax.default_matmul_precision("highest"):
        tokens, embedding = (np.asarray(a) for a in jax.jit(encoder.apply)(variables, jnp.asarray(x)))
    return float(np.abs(tokens - ref_tokens).max()), float(np.abs(embedding - ref_embedding).max())


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from uamix_jax.interop.audiomae import CheckpointError, convert_state_dict, save_converted
    from uamix_jax.interop.weights_io import read_state_dict

    try:
        start = time.perf_counter()
        _say(f"reading {args.input} ...")
        state_dict, source = read_state_dict(args.input)
        variables, info = convert_state_dict(state_dict, num_heads=args.num_heads, source=source)
        dropped = info["dropped_keys"]
        _say(f"found AudioMAE {info['format']} checkpoint: ViT-{info['model_size']} (width {info['width']}, depth "
             f"{info['depth']}, heads {info['num_heads']}, mlp {info['mlp_dim']}), input [T={info['target_length']}, "
             f"F={info['num_mel_bins']}], pooling '{info['pooling']}', {info['num_params']:,} encoder parameters")
        if dropped:
            groups = sorted({k.split(".")[0] for k in dropped})
            _say(f"dropped {len(dropped)} keys not used by the encoder: {', '.join(groups)}")
        _say(f"pos_embed matches the generated '{info['checkpoint_posemb']}' sin-cos table")
        out = save_converted(args.output, variables, info, overwrite=args.overwrite)
        _say(f"wrote {out}/variables and {out}/audiomae.json ({time.perf_counter() - start:.1f} s)")
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if args.check:
        _say(f"checking against the PyTorch reference on random input [{args.batch}, {info['target_length']}, "
             f"{info['num_mel_bins']}] ...")
        d_tokens, d_embedding = _check(state_dict, out, info, args.batch, args.seed)
        _say(f"max |Δ| tokens: {d_tokens:.3g}, embedding: {d_embedding:.3g} (tolerance {args.tolerance:g})")
        if max(d_tokens, d_embedding) > args.tolerance:
            print(f"error: the converted encoder differs from PyTorch by more than {args.tolerance:g}",
                  file=sys.stderr)
            return 1
        _say("check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
