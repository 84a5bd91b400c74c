#!/usr/bin/env python3
"""t-SNE of frozen encoders' clip embeddings, one panel per encoder, colours by class: the paper's Fig. 6.

    python tools/plot_tsne.py --encoder AudioMAE=ckpt/audiomae --encoder uaMix-MAE=W2 \
        --audio /data/ESC-50-folders --classes dog,rain,crying_baby --out tsne.png

--audio is a folder-per-class layout (`<class>/<clip>.wav`); --classes keeps those classes (default: all, at most
--max-classes). Embeddings use the few-shot input policy (AudioSet statistics, the centre T frames;
docs/method.md, "Few-shot evaluation"); t-SNE is scikit-learn's (2-D, PCA initialisation, seeded), run on each encoder's L2-normalised
embeddings separately, since each encoder has its own space. Exit status 2 on a bad argument or path.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

try:
    import uamix_jax  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


EXACT_TSNE_MAX = 2000


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="plot_tsne.py", description="t-SNE of clip embeddings, one panel per encoder (the paper's Fig. 6).",
        epilog="Example: python tools/plot_tsne.py --encoder AudioMAE=ckpt/audiomae --encoder ours=W2 "
               "--audio clips/ --out tsne.png")
    parser.add_argument("--encoder", action="append", required=True, metavar="NAME=PATH",
                        help="an encoder to draw (repeat for several): NAME=PATH or PATH; PATH is anything "
                             "load_encoder reads (a converted AudioMAE directory, a weights file, hf-hub:ORG/NAME, "
                             "a training workdir)")
    parser.add_argument("--audio", required=True, help="folder-per-class layout: <class>/<clip>.<wav|flac|...>")
    parser.add_argument("--classes", default="", help="comma-separated class (folder) names to keep (default: all)")
    parser.add_argument("--max-classes", type=int, default=10, help="without --classes, the first this many "
                        "classes in sorted order (default: 10; a legend of more is unreadable)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--target-length", type=int, default=0,
                        help="frames per clip (default 0: each encoder's own; 1024 for AudioMAE's weights)")
    parser.add_argument("--clip-seconds", type=float, default=10.0, help="audio read per clip, its centre")
    parser.add_argument("--stats", default="audioset", help="normalisation statistics (default: audioset)")
    parser.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (capped below the "
                        "number of clips)")
    parser.add_argument("--seed", type=int, default=0, help="t-SNE seed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def _encoders(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = os.path.basename(os.path.normpath(item)), item
        out.append((name.strip() or path, path.strip()))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"--encoder names must differ, got {names}; write them as NAME=PATH")
    return out


def tsne_2d(embeddings: Any, perplexity: float, seed: int) -> Any:
    """[N, D] → [N, 2]: scikit-learn's TSNE on L2-normalised rows (perplexity capped at (N − 1) / 3).

    The exact gradient up to EXACT_TSNE_MAX points (a figure's few hundred clips: seconds, where Barnes-Hut's
    OpenMP tree code took 30 s for 24 points on the shared 2-core machine), Barnes-Hut beyond.
    """
    import numpy as np
    from sklearn.manifold import TSNE

    x = np.asarray(embeddings, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    perplexity = min(perplexity, max(1.0, (x.shape[0] - 1) / 3))
    method = "exact" if x.shape[0] <= EXACT_TSNE_MAX else "barnes_hut"
    return TSNE(n_components=2, perplexity=perplexity, init="pca", method=method, random_state=seed).fit_transform(x)


def draw(panels: list[tuple[str, Any]], labels: Any, class_names: list[str], path: str) -> str:
    """One scatter panel per (title, points [N, 2]), colour = class, a shared legend; writes a PNG (Agg, no pyplot)."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(panels) + 1.8, 4.2), dpi=120)
    cmap = "tab10" if len(class_names) <= 10 else "tab20"
    for i, (title, points) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for c, name in enumerate(class_names):
            rows = np.asarray(labels) == c
            ax.scatter(points[rows, 0], points[rows, 1], s=10, color=_colour(cmap, c), label=name)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = fig.axes[-1].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", fontsize="small", markerscale=1.5)
    fig.tight_layout(rect=(0, 0, 1 - 1.7 / fig.get_figwidth(), 1))
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _colour(cmap: str, index: int) -> Any:
    from matplotlib import colormaps

    colours = colormaps[cmap]
    return colours(index % colours.N)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import numpy as np

    from uamix_jax.data.manifest import DatasetLayoutError, read_folder
    from uamix_jax.evaluation.embed import InputPolicy, embed_manifest
    from uamix_jax.evaluation.encoders import load_encoder

    try:
        encoders = _encoders(args.encoder)
        manifest = read_folder(args.audio)
        wanted = [c.strip() for c in args.classes.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in manifest.class_names]
        if unknown:
            raise ValueError(f"--classes {unknown} are not class folders of {args.audio} (it has "
                             f"{list(manifest.class_names)[:12]}{' ...' if manifest.num_classes > 12 else ''})")
        names = wanted or list(manifest.class_names)[: args.max_classes]
    except (OSError, ValueError, DatasetLayoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    keep_ids = [manifest.class_names.index(c) for c in names]
    manifest = manifest.select(np.isin(manifest.labels, keep_ids))
    position = {k: i for i, k in enumerate(keep_ids)}
    labels = np.array([position[int(label)] for label in manifest.labels])
    print(f"{len(manifest)} clips of {len(names)} classes under {args.audio}", flush=True)

    panels = []
    for name, path in encoders:
        try:
            encoder, variables = load_encoder(path, target_length=args.target_length or None)
        except (OSError, ValueError) as err:
            print(f"error: --encoder {name}={path}: {err}", file=sys.stderr)
            return 2
        policy = InputPolicy(target_length=encoder.target_length, stats=args.stats, clip_seconds=args.clip_seconds)
        emb, valid = embed_manifest(manifest, encoder, variables, policy=policy, batch_size=args.batch_size,
                                    progress=not args.no_progress)
        points = np.full((len(manifest), 2), np.nan)
        points[valid] = tsne_2d(emb[valid], args.perplexity, args.seed)
        panels.append((name, points))
        print(f"[{name}] {int(valid.sum())} embeddings of dimension {encoder.width}", flush=True)
    out = draw(panels, labels, names, args.out)
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
