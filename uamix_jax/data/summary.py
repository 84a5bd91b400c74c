"""The dataset summary the trainer prints at start-up: clips, classes, splits, hours of audio, bad files so far."""
from __future__ import annotations

from typing import Any

import numpy as np
import soundfile as sf

from uamix_jax.data.manifest import Manifest


def _duration(manifest: Manifest, index: int, tfds_source: Any) -> float | None:
    if tfds_source is not None:
        try:
            return tfds_source.duration(index)
        except Exception:  # noqa: BLE001 - a bad record only leaves the estimate
            return None
    try:
        info = sf.info(manifest.paths[index])
    except Exception:  # noqa: BLE001 - unreadable headers are counted, not fatal
        return None
    return info.frames / info.samplerate if info.samplerate else None


def dataset_summary(manifest: Manifest, bad_count: int = 0, *, max_files: int = 500, seed: int = 0) -> str:
    """A few lines describing `manifest`. Hours come from file headers (soundfile.info, no decoding); above
    `max_files` clips they are estimated from a seeded random sample of that many, and the text says so."""
    n = len(manifest)
    lines = [f"dataset {manifest.name!r}: {n:,} clips, {manifest.num_classes:,} classes"]
    names, counts = np.unique(manifest.splits.values, return_counts=True)
    lines.append("  splits: " + ", ".join(f"{s.decode()}={c:,}" for s, c in zip(names, counts)))
    folds = np.unique(manifest.folds[manifest.folds >= 0])
    if folds.size:
        lines.append(f"  folds: {', '.join(str(int(f)) for f in folds)}")
    unlabelled = int(np.sum(manifest.labels < 0))
    if unlabelled:
        lines.append(f"  unlabelled clips: {unlabelled:,}")
    if n:
        rows = np.arange(n) if n <= max_files else np.sort(np.random.default_rng(seed).choice(n, max_files, False))
        tfds_source = None
        if manifest.tfds is not None:
            from uamix_jax.data.tfds_source import TfdsSource
            tfds_source = TfdsSource(manifest)
        seconds = [d for d in (_duration(manifest, int(i), tfds_source) for i in rows) if d is not None]
        unreadable = len(rows) - len(seconds)
        if seconds:
            total = float(np.mean(seconds)) * n
            how = ("from every file header" if len(rows) == n
                   else f"estimate from {len(seconds):,} of {n:,} clips sampled")
            lines.append(f"  audio: {total / 3600:,.2f} h = {total:,.0f} s ({how}; clips "
                         f"{min(seconds):.2f}-{max(seconds):.2f} s)")
        if unreadable:
            lines.append(f"  unreadable headers among those checked: {unreadable:,}")
    lines.append(f"  bad files found so far: {bad_count:,}")
    return "\n".join(lines)
