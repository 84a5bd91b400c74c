#!/usr/bin/env python3
"""Embed every audio file under a folder with a frozen encoder (AudioMAE or a uamix-jax training workdir).

    python tools/embed.py --encoder W2 --audio clips/ --out clips.npz

Writes an .npz with `embeddings` float32 [M, D] (one row per file that could be read, in sorted path order),
`paths` [M] (relative to --audio), `failed` (files that could not be read), `encoder` and `policy` (JSON strings).
The input policy is the few-shot one (docs/method.md, "Few-shot evaluation"): AudioSet statistics, the centre T frames by default, or
with --crop windows the mean embedding of consecutive T-frame windows. Exit status 2 on a bad argument or path.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

try:
    import uamix_jax  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="embed.py",
        description="Clip embeddings of every audio file under a folder (recursive), with a frozen encoder.",
        epilog="Example: python tools/embed.py --encoder ckpt/audiomae --audio clips/ --out clips.npz")
    parser.add_argument("--encoder", required=True,
                        help="anything load_encoder reads: a converted AudioMAE directory, an AudioMAE or timm "
                             "weights file (.pth, .pt, .bin, .safetensors), hf-hub:ORG/NAME, or a training workdir")
    parser.add_argument("--audio", required=True, help="folder of audio files (wav, flac, ogg, opus, mp3, m4a)")
    parser.add_argument("--out", required=True, help="the .npz file to write")
    parser.add_argument("--target-length", type=int, default=0,
                        help="frames per window (default 0: the encoder's own, from its pos_embed or its workdir's "
                             "config.json; 1024 for AudioMAE's released weights)")
    parser.add_argument("--posemb", default=None, choices=("prefix", "audiomae"),
                        help="positional-table policy (default: the checkpoint's own table; 'prefix' runs a "
                             "1024-frame encoder on shorter windows with the codes of pretraining)")
    parser.add_argument("--crop", default="centre", choices=("centre", "windows"),
                        help="centre T frames, or the mean over consecutive T-frame windows (default: centre)")
    parser.add_argument("--clip-seconds", type=float, default=30.0,
                        help="at most this much audio per file, its centre (default: 30)")
    parser.add_argument("--stats", default="audioset", help="normalisation statistics (default: audioset)")
    parser.add_argument("--batch-size", type=int, default=32, help="clips per batch (default: 32)")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (default: 0, in-process)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import jax.numpy as jnp
    import numpy as np

    from uamix_jax.data.manifest import build_manifest, common_prefix, list_audio_files
    from uamix_jax.evaluation.embed import InputPolicy, embed_manifest, encoder_fields
    from uamix_jax.evaluation.encoders import load_encoder

    audio = os.path.abspath(args.audio)
    if not os.path.isdir(audio):
        print(f"error: --audio {audio} is not a folder", file=sys.stderr)
        return 2
    files = list_audio_files(audio)
    if not files:
        print(f"error: no audio files under {audio}", file=sys.stderr)
        return 2
    try:
        encoder, variables = load_encoder(args.encoder, target_length=args.target_length or None,
                                          posemb=args.posemb, dtype=getattr(jnp, args.dtype))
        policy = InputPolicy(target_length=encoder.target_length, stats=args.stats, crop=args.crop,
                             clip_seconds=args.clip_seconds)
    except (OSError, ValueError) as err:  # CheckpointError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    prefix = common_prefix(audio)
    relative = [p[len(prefix):] for p in files]
    manifest = build_manifest("audio", files, [()] * len(files), (), clip_ids=relative, prefix=prefix)
    print(f"{len(files)} files under {audio}; encoder {args.encoder} (width {encoder.width}, T = "
          f"{encoder.target_length}), crop {args.crop}", flush=True)
    emb, valid = embed_manifest(manifest, encoder, variables, policy=policy, batch_size=args.batch_size,
                                worker_count=args.workers, progress=not args.no_progress)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    # clip_ids + embeddings + valid: the file is an `npz:FILE` encoder of the few-shot command and the linear probe
    # for a folder dataset rooted at --audio (whose clip ids are these relative paths)
    np.savez(out, embeddings=emb, clip_ids=np.array(relative), valid=valid, failed=np.array(relative)[~valid],
             encoder=np.array(json.dumps({"path": os.path.abspath(args.encoder), **encoder_fields(encoder)})),
             policy=np.array(json.dumps(policy.to_dict())))
    failed = int((~valid).sum())
    print(f"wrote {out}: {int(valid.sum())} embeddings of dimension {encoder.width}"
          + (f"; {failed} files could not be read (valid False, listed under 'failed')" if failed else ""),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
