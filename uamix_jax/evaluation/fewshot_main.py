"""`run_fewshot(config, workdir)`: the few-shot command (configs/fewshot.py), top to bottom.

manifest (labelled clips of config.data) → the encoders (init_from, then config.compare; our encoders, HEAR
modules or precomputed embeddings, `sources`), each loaded and embedded once (embeddings from the cache or computed)
→ every (N, K) setting: episodes sampled once and every encoder scored on them (`fewshot_driver.score_fewshot`) → a
JSON per encoder and setting (with its per-episode accuracies and the episodes' hash) → with several encoders, the
paired difference of each against the first (`paired.paired_difference`) → table on stdout → with `sweep` or
several encoders, the Fig. 3-style PNG.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from uamix_jax.data.bad_audio import check_manifest
from uamix_jax.data.layouts import dataset_label, read_configured_dataset
from uamix_jax.evaluation.fewshot_driver import Embedder, FewShotResult, score_fewshot
from uamix_jax.evaluation.paired import paired_difference
from uamix_jax.evaluation.plots import plot_fewshot_curves
from uamix_jax.evaluation.sources import EncoderSpec, make_embedder, parse_specs
from uamix_jax.models.precision import check_precision

SWEEP_WAYS = (5, 10, 15, 20)
SWEEP_SHOTS = (1, 5)


def _report(message: str) -> None:
    print(message, flush=True)


def parse_encoders(config: ml_collections.ConfigDict) -> list[EncoderSpec]:
    """The encoders to score: config.init_from first, then each item of config.compare (comma separated), each
    `[NAME=]PATH`, `[NAME=]hear:MODULE[@MODEL_FILE]` or `[NAME=]npz:FILE` (`sources.parse_spec`). A path of '' is a
    random init of config.model.size; the same encoder twice keeps its first line."""
    items = [config.init_from] + [s.strip() for s in config.compare.split(",") if s.strip()]
    return parse_specs(items, random_label=f"random init ({config.model.size})")


def settings(config: ml_collections.ConfigDict) -> list[tuple[int, int]]:
    f = config.fewshot
    if f.sweep:
        return [(n, k) for k in SWEEP_SHOTS for n in SWEEP_WAYS]
    return [(int(f.ways), int(f.shots))]


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "encoder"


def run_fewshot(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """Runs the few-shot evaluation configured by configs/fewshot.py in `workdir`; returns the result records.

    Runs on one process (with all its local devices): in a multi-host job the other processes return at once, as
    the embeddings of a few-shot dataset fit one host and the outputs must have one writer.
    """
    if jax.process_index() != 0:
        logging.info("few-shot evaluation runs on process 0 only; process %d has nothing to do",
                     jax.process_index())
        return []
    with jax.default_matmul_precision(check_precision(config.precision)):
        return _run_fewshot(config, workdir)


def _embedders(config: ml_collections.ConfigDict, workdir: str, bad_audio_log: str) -> list[Embedder]:
    return [make_embedder(spec, config, cache_dir=os.path.join(workdir, "embeddings"), bad_audio_log=bad_audio_log,
                          report=_report) for spec in parse_encoders(config)]


def _run_fewshot(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    f = config.fewshot
    for name in ("ways", "shots", "queries", "episodes"):
        if int(f[name]) < 1:
            raise ValueError(f"config.fewshot.{name} must be >= 1, got {f[name]}")
    if int(config.eval.batch_size) < 1:
        raise ValueError(f"config.eval.batch_size must be >= 1, got {config.eval.batch_size}")
    dataset = dataset_label(config.data)
    manifest = read_configured_dataset(config.data, labelled=True)
    check_manifest(manifest)
    out_dir = os.path.join(workdir, "fewshot")
    os.makedirs(out_dir, exist_ok=True)
    bad_audio_log = os.path.join(workdir, "bad_audio.txt")  # where training writes its own
    _report(f"few-shot on {dataset}: {len(manifest):,} labelled clips, {manifest.num_classes} classes; crop "
            f"{config.data.crop}, {f.episodes} episodes, seed {f.seed}")

    def on_embedded(e: Embedder, emb: np.ndarray, valid: np.ndarray) -> None:
        if not valid.all():
            _report(f"[{e.label}] {int((~valid).sum())} clips could not be read and are left out for every encoder "
                    f"(see {bad_audio_log})")

    def on_skip(ways: int, shots: int, usable: int) -> None:
        _report(f"skipping {ways}-way {shots}-shot: only {usable} classes have {shots + 1} or more clips")

    embedders = _embedders(config, workdir, bad_audio_log)
    results = score_fewshot(embedders, manifest, settings(config), queries=int(f.queries), episodes=int(f.episodes),
                            seed=int(f.seed), dataset=dataset, skip_unusable=bool(f.sweep), on_embedded=on_embedded,
                            on_skip=on_skip)
    first = embedders[0].label
    reference = {r.setting: r for r in results if r.label == first}
    for r in results:
        if r.record["short_classes"]:
            short = r.record["short_classes"]
            shown = ", ".join(f"{name} ({q})" for name, q in list(short.items())[:8])
            _report(f"[{r.label}] {r.setting[0]}-way {r.setting[1]}-shot: {len(short)} classes have too few clips for "
                    f"{f.queries} queries and give fewer: {shown}{', ...' if len(short) > 8 else ''}")
        if r.label != first:
            r.record["versus"] = {"encoder": first, **paired_difference(
                100.0 * r.accuracies, 100.0 * reference[r.setting].accuracies)}
        r.record["episode_accuracy"] = [round(float(a), 6) for a in r.accuracies]
        target_dir = out_dir if r.label == first else os.path.join(out_dir, _slug(r.label))
        os.makedirs(target_dir, exist_ok=True)
        json_path = os.path.join(target_dir, f"{dataset}_{r.setting[0]}way{r.setting[1]}shot.json")
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(r.record, fh, indent=1)
            fh.write("\n")
        logging.info("wrote %s", json_path)
    records = [r.record for r in results]
    _report(format_table(results))
    if records and (f.sweep or len(embedders) > 1):
        name = f"{dataset}_{'sweep' if f.sweep else 'compare'}.png"
        png = plot_fewshot_curves(records, os.path.join(out_dir, name), title=f"{dataset}: N-way K-shot")
        _report(f"figure: {png}")
    return records


def format_table(results: list[FewShotResult]) -> str:
    """The stdout table: encoder, setting, queries, accuracy ± 95 % CI (percent), and the paired difference against
    the first encoder with its 95 % interval and wins / ties / losses over the episodes."""
    width = max([len("encoder")] + [len(r.label) for r in results])
    lines = [f"{'encoder':<{width}}  setting         queries  accuracy (%) ± 95% CI   "
             f"paired Δ vs first [95% CI]  W/T/L", "-" * (width + 80)]
    for result in results:
        r = result.record
        q = f"{r['queries']}" if r["queries_min"] >= r["queries"] else f"{r['queries_min']} of {r['queries']}"
        line = (f"{r['label']:<{width}}  {r['ways']:>2}-way {r['shots']}-shot   {q:>7}  "
                f"{r['accuracy_mean']:6.2f} ± {r['ci95']:.2f}")
        if "versus" in r:
            v = r["versus"]
            line += (f"          {v['mean']:+6.2f} [{v['ci95_low']:+.2f}, {v['ci95_high']:+.2f}]  "
                     f"{v['wins']}/{v['ties']}/{v['losses']}")
        lines.append(line)
    return "\n".join(lines)
