"""`run_fewshot(config, workdir)`: the few-shot command (configs/fewshot.py), top to bottom.

manifest (labelled clips of config.data) → for each encoder (init_from, then config.compare): load it → embeddings
from the cache or computed once → every (N, K) setting: 600 seeded episodes in one jitted call → JSON per setting →
table on stdout → with `sweep` or several encoders, the Fig. 3-style PNG.
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
from uamix_jax.data.layouts import read_configured_dataset
from uamix_jax.data.manifest import Manifest
from uamix_jax.evaluation.embed import InputPolicy, cached_embeddings, params_fingerprint
from uamix_jax.evaluation.encoders import load_encoder, random_encoder
from uamix_jax.evaluation.episodes import class_members
from uamix_jax.evaluation.fewshot import evaluate_fewshot
from uamix_jax.evaluation.plots import plot_fewshot_curves
from uamix_jax.models.posemb import PRETRAIN_LENGTH
from uamix_jax.models.precision import check_precision, compute_dtype

SWEEP_WAYS = (5, 10, 15, 20)
SWEEP_SHOTS = (1, 5)


def _say(message: str) -> None:
    print(message, flush=True)


def dataset_label(data: ml_collections.ConfigDict) -> str:
    """The dataset's name in output file names, figure titles and metric keys.

    data.label when set; else, for `folder` and `manifest` data, the folder's base name (the manifest file's, less
    its extension), so that two such datasets evaluated into one OUT do not overwrite each other; the TFDS dataset's
    name for `tfds`; else data.name (esc50, ...). Characters other than [A-Za-z0-9_.-] become '_'.
    """
    name = data.get("label", "")
    if not name and data.name in ("folder", "manifest") and data.root:
        root = os.path.normpath(data.root)
        name = os.path.splitext(os.path.basename(root))[0] if os.path.isfile(root) else os.path.basename(root)
    if not name:
        name = data.get("tfds_name", "") if data.name == "tfds" else ""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name or data.name)


def load_labelled_manifest(data: ml_collections.ConfigDict) -> Manifest:
    """config.data's manifest (one split when data.split is set), labelled clips only."""
    return read_configured_dataset(data, labelled=True)


def parse_encoders(config: ml_collections.ConfigDict) -> list[tuple[str, str]]:
    """[(label, path)]: config.init_from first, then each item of config.compare, each `[label=]path`.

    A path of '' is a random init of config.model.size ('label=' names that line). An item that exists as a path
    as a whole is a path, even when it holds '=' (e.g. runs/lr=3e-4).
    """
    items = [config.init_from] + [s.strip() for s in config.compare.split(",") if s.strip()]
    out: list[tuple[str, str]] = []
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or os.path.exists(item):
            label, path = "", item
        path = path.strip()
        if path and os.path.abspath(path) in {os.path.abspath(p) for _, p in out if p}:
            continue  # the same encoder twice would only repeat its line
        label = label.strip() or (os.path.basename(os.path.normpath(path)) if path
                                  else f"random init ({config.model.size})")
        out.append((label, path))
    labels = [lab for lab, _ in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"config.compare: encoder labels must differ, got {labels}; name them as label=path")
    return out


def _load(path: str, config: ml_collections.ConfigDict) -> tuple[Any, Any, str]:
    dtype = compute_dtype(config.dtype)
    if path:
        # target_length 0 / posemb '': the checkpoint's own (what it was trained with)
        encoder, variables = load_encoder(path, target_length=config.model.target_length or None,
                                          posemb=config.model.posemb or None, dtype=dtype)
        return encoder, variables, os.path.abspath(path)
    encoder, variables = random_encoder(config.model.size, target_length=config.model.target_length or PRETRAIN_LENGTH,
                                        posemb=config.model.posemb or "prefix", seed=config.seed, dtype=dtype)
    return encoder, variables, f"random:{config.model.size}:seed{config.seed}"


def settings(config: ml_collections.ConfigDict) -> list[tuple[int, int]]:
    if config.sweep:
        return [(n, k) for k in SWEEP_SHOTS for n in SWEEP_WAYS]
    return [(int(config.ways), int(config.shots))]


def _usable_classes(labels: np.ndarray, shots: int) -> int:
    _, counts, _ = class_members(labels)
    return int(np.sum(counts >= shots + 1))


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "encoder"


def run_fewshot(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """Runs the few-shot evaluation configured by configs/fewshot.py in `workdir`; returns the result rows.

    Runs on one process (with all its local devices): in a multi-host job the other processes return at once, as
    the embeddings of a few-shot dataset fit one host and the outputs must have one writer.
    """
    if jax.process_index() != 0:
        logging.info("few-shot evaluation runs on process 0 only; process %d has nothing to do",
                     jax.process_index())
        return []
    with jax.default_matmul_precision(check_precision(config.get("precision", "default"))):
        return _run_fewshot(config, workdir)


def _run_fewshot(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    for name in ("ways", "shots", "queries", "episodes", "batch_size"):
        if int(config[name]) < 1:
            raise ValueError(f"config.{name} must be >= 1, got {config[name]}")
    dataset = dataset_label(config.data)
    manifest = load_labelled_manifest(config.data)
    check_manifest(manifest)
    out_dir = os.path.join(workdir, "fewshot")
    os.makedirs(out_dir, exist_ok=True)
    bad_audio_log = os.path.join(workdir, "bad_audio.txt")  # where training writes its own
    _say(f"few-shot on {dataset}: {len(manifest):,} labelled clips, {manifest.num_classes} classes; crop "
         f"{config.crop}, {config.episodes} episodes, seed {config.seed}")

    rows: list[dict[str, Any]] = []
    encoders = parse_encoders(config)
    for position, (label, path) in enumerate(encoders):
        encoder, variables, description = _load(path, config)
        policy = InputPolicy(target_length=encoder.target_length, stats=config.data.stats, crop=config.crop,
                             clip_seconds=config.clip_seconds)
        fingerprint = params_fingerprint(variables)
        emb, valid, cache_file, reused = cached_embeddings(
            manifest, encoder, variables, policy=policy, cache_dir=os.path.join(workdir, "embeddings"),
            batch_size=config.batch_size, worker_count=config.worker_count, progress=config.progress,
            params_hash=fingerprint, bad_audio_log=bad_audio_log)
        _say(f"[{label}] {description}: ViT {encoder.width}x{encoder.depth}, T = {encoder.target_length}; embeddings "
             f"{'reused from' if reused else 'written to'} {cache_file}")
        if not valid.all():
            _say(f"[{label}] {int((~valid).sum())} clips could not be read and are left out "
                 f"(see {bad_audio_log})")
        labels = np.where(valid, manifest.labels, -1).astype(np.int32)
        target_dir = out_dir if position == 0 else os.path.join(out_dir, _slug(label))
        for ways, shots in settings(config):
            usable = _usable_classes(labels, shots)
            if config.sweep and ways > usable:  # outside a sweep the setting was asked for: evaluate_fewshot raises
                _say(f"[{label}] skipping {ways}-way {shots}-shot: only {usable} classes have {shots + 1} or more "
                     f"clips")
                continue
            result = evaluate_fewshot(emb, labels, ways=ways, shots=shots, queries=config.queries,
                                      episodes=config.episodes, seed=config.seed)
            # label ids -> class names, for the reader of the output
            short = {manifest.class_names[int(c)]: q for c, q in result["short_classes"].items()}
            result["short_classes"] = short
            if short:
                shown = ", ".join(f"{name} ({q})" for name, q in list(short.items())[:8])
                _say(f"[{label}] {ways}-way {shots}-shot: {len(short)} classes have too few clips for "
                     f"{config.queries} queries and give fewer: {shown}{', ...' if len(short) > 8 else ''}")
            result = {"dataset": dataset, **result, "encoder": description, "label": label,
                      "crop": config.crop, "target_length": encoder.target_length, "embeddings": cache_file,
                      "params_sha256": fingerprint}
            os.makedirs(target_dir, exist_ok=True)
            json_path = os.path.join(target_dir, f"{dataset}_{ways}way{shots}shot.json")
            with open(json_path, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=1)
                f.write("\n")
            logging.info("wrote %s", json_path)
            rows.append(result)

    _say(format_table(rows))
    if rows and (config.sweep or len(encoders) > 1):
        name = f"{dataset}_{'sweep' if config.sweep else 'compare'}.png"
        png = plot_fewshot_curves(rows, os.path.join(out_dir, name), title=f"{dataset}: N-way K-shot")
        _say(f"figure: {png}")
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The stdout table: encoder, setting, queries, accuracy ± 95 % CI (percent)."""
    width = max([len("encoder")] + [len(r["label"]) for r in rows])
    lines = [f"{'encoder':<{width}}  setting         queries  accuracy (%) ± 95% CI",
             "-" * (width + 46)]
    for r in rows:
        q = f"{r['queries']}" if r["queries_min"] >= r["queries"] else f"{r['queries_min']} of {r['queries']}"
        lines.append(f"{r['label']:<{width}}  {r['ways']:>2}-way {r['shots']}-shot   {q:>7}  "
                     f"{r['accuracy_mean']:6.2f} ± {r['ci95']:.2f}")
    return "\n".join(lines)
