#!/usr/bin/env python3
"""Export a uamix-jax encoder (converted directory or training workdir) to AudioMAE's PyTorch format.

    python tools/export_audiomae.py --input W2 --output W2_audiomae.pth [--check] [--encoder-only] [--head head.pth]
                                    [--format pth|safetensors]

Writes `{'model': state_dict, 'uamix_jax': metadata}` (AudioMAE's 'model' wrapper; with `--format safetensors` the
same keys at the top level of a .safetensors file, metadata as JSON in its header), `pos_embed` included, by what
the source holds (docs/interop.md): an encoder with `norm` (converted pretrained directory, stage-1/2 workdir) loads
with strict=True into timm's VisionTransformer(img_size=(T, 128), patch_size=16, in_chans=1, num_classes=0,
global_pool='avg', fc_norm=False); a pretraining workdir adds AudioMAE's plain decoder; a fine-tuning workdir writes
`fc_norm` + `head` (AudioMAE's fine-tuning VisionTransformer). `--encoder-only` leaves out (and lists) the decoder or
the classifier head. `--head FILE` also writes a tuning workdir's NNCLR head (projector, predictor, EMA target
projector, BatchNorm statistics in PyTorch's convention). `--check` runs the PyTorch reference on the written file
and the Flax encoder on the same random input at matmul precision 'highest' and exits 1 above --tolerance.
Errors (unreadable source, mismatched keys) exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

try:
    import uamix_jax  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="export_audiomae.py",
        description="Write a uamix-jax encoder (converted AudioMAE directory, or a tuning, pretraining or "
                    "fine-tuning workdir) as an AudioMAE-format PyTorch checkpoint.",
        epilog="Example: python tools/export_audiomae.py --input W2 --output W2.pth --check --head W2_head.pth")
    parser.add_argument("--input", required=True, help="converted AudioMAE directory or training workdir")
    parser.add_argument("--output", required=True, help="the .pth (or .safetensors) file to write")
    parser.add_argument("--format", choices=("pth", "safetensors"), default=None,
                        help="file format (default: safetensors when --output ends with .safetensors, else pth); "
                             "--head is written in the same format")
    parser.add_argument("--encoder-only", action="store_true",
                        help="leave out the decoder (pretraining) or classifier head (fine-tuning), listing them")
    parser.add_argument("--head", default="",
                        help="also write the NNCLR head of a tuning workdir to this .pth (key names: docs/interop.md)")
    parser.add_argument("--bn-batch", type=int, default=0,
                        help="--head: the global batch the head's BatchNorm saw (default: config.json's "
                             "train.global_batch); running_var = Flax var · n/(n − 1)")
    parser.add_argument("--step", type=int, default=None, help="workdir checkpoint step (default: the latest)")
    parser.add_argument("--check", action="store_true",
                        help="run the PyTorch reference on the written file and the Flax encoder on the same random "
                             "input (precision 'highest'); exit 1 above --tolerance")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="--check bound (default: 1e-4, float32)")
    parser.add_argument("--batch", type=int, default=2, help="--check batch size (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="--check input seed (default: 0)")
    return parser.parse_args(argv)


def _say(message: str) -> None:
    print(message, flush=True)


def _head(args: argparse.Namespace, export, say) -> None:
    from uamix_jax.interop.export import nnclr_head_state_dict, save_export

    if export.kind != "tune":
        raise ValueError(f"--head: {args.input} is a {export.kind} source; only a tuning (stage 1/2) workdir has an "
                         f"NNCLR head")
    n = args.bn_batch or int(export.config.get("train", {}).get("global_batch", 0))
    if n < 2:
        raise ValueError(f"--head: {args.input}/config.json has no train.global_batch; pass --bn-batch N (the "
                         f"global batch the head was trained with)")
    head = export.config.get("head", {})
    state = nnclr_head_state_dict(export.saved_state, global_batch=n)
    meta = {"source": export.meta["source"], "kind": "nnclr_head", "width": export.encoder.width,
            "proj_hidden_dim": head.get("proj_hidden_dim"), "proj_dim": head.get("proj_dim"),
            "pred_hidden_dim": head.get("pred_hidden_dim"), "bn_global_batch": n,
            "target_projector": any(k.startswith("target_projector.") for k in state),
            "step": export.meta.get("step")}
    out = save_export(args.head, state, meta, file_format=args.format)
    say(f"wrote the NNCLR head ({len(state)} entries; running_var = var · {n}/{n - 1}) to {out}")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    args.format = args.format or ("safetensors" if args.output.endswith(".safetensors") else "pth")
    from uamix_jax.interop.export import check_export, export_source, save_export
    from uamix_jax.interop.torch_io import CheckpointError

    try:
        start = time.perf_counter()
        _say(f"reading {args.input} ...")
        export = export_source(args.input, encoder_only=args.encoder_only, step=args.step)
        e = export.encoder
        _say(f"{export.kind} source: ViT {e.width}x{e.depth} ({e.num_heads} heads), input [T={e.target_length}, "
             f"F={e.num_mel_bins}], pooling '{e.pooling}', positional table '{e.posemb}'")
        if args.encoder_only:
            _say(f"--encoder-only: left out {len(export.left_out)} keys"
                 + (f": {', '.join(export.left_out)}" if export.left_out else " (the source has only the encoder)"))
        out = save_export(args.output, export.state_dict, export.meta, file_format=args.format)
        _say(f"wrote {len(export.state_dict)} keys to {out} ({time.perf_counter() - start:.1f} s); loads with "
             f"strict=True into {export.target}")
        if args.head:
            _head(args, export, _say)
    except (CheckpointError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if args.check:
        _say(f"checking against the PyTorch reference on random input [{args.batch}, {e.target_length}, "
             f"{e.num_mel_bins}] at matmul precision 'highest' ...")
        diffs = check_export(out, export, batch=args.batch, seed=args.seed)
        _say("max |Δ| " + ", ".join(f"{k}: {v:.3g}" for k, v in diffs.items()) + f" (tolerance {args.tolerance:g})")
        if max(diffs.values()) > args.tolerance:
            print(f"error: the exported model differs from the Flax encoder by more than {args.tolerance:g}",
                  file=sys.stderr)
            return 1
        _say("check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
