"""The laptop demo (`--config=configs/stage2.py:demo`): synthesise data, run stage 1, stage 2, then few-shot.

Layout of the workdir: `data/` (the synthesised, unlabelled-for-training folder-per-class dataset), `heldout/`
(other clips of the same classes, for the few-shot episodes), `stage1/`, `stage2/` (training workdirs, each
resumable), `fewshot/demo.json`. With `configs/stage1.py:demo` only stage 1 runs. The few-shot line compares the
encoder before tuning (stage 1 keeps it frozen, so it is stage 1's encoder) with the tuned one.
"""
from __future__ import annotations

import copy
import json
import os

import ml_collections
import numpy as np

from uamix_jax.data.demo import ensure_demo_dataset
from uamix_jax.data.layouts import read_dataset
from uamix_jax.evaluation.embed import InputPolicy, embed_manifest
from uamix_jax.evaluation.encoders import load_encoder
from uamix_jax.evaluation.fewshot import evaluate_fewshot
from uamix_jax.train.loop import train_and_evaluate
from uamix_jax.train.metrics import read_metrics

DEMO_CLASSES = 8
DEMO_CLIPS_PER_CLASS = 24
HELDOUT_CLIPS_PER_CLASS = 16
STAGE1_EPOCHS = 40


def stage1_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The stage-1 run that precedes a stage-2 demo: same data and model, head only, the paper's k = 1, no EMA."""
    c = copy.deepcopy(config)
    with c.unlocked():
        c.stage = 1
        c.init_from = ""
        c.nnclr.top_k = 1
        c.nnclr.ema_momentum = 0.0
        c.train.epochs = STAGE1_EPOCHS
    return c


def _last(workdir: str) -> str:
    rows = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    row = rows[-1]
    return f"step {row['step']}: loss {row['loss']:.4f}, queue neighbour label accuracy {row['nn_accuracy']:.3f}"


def fewshot_accuracy(encoder_dir: str, data_root: str, config: ml_collections.ConfigDict) -> dict:
    """N-way K-shot accuracy (config.fewshot) of a training workdir's encoder on a folder dataset."""
    encoder, variables = load_encoder(encoder_dir)
    manifest = read_dataset("folder", data_root)
    policy = InputPolicy(target_length=encoder.target_length, stats=config.data.stats,
                         clip_seconds=config.data.clip_seconds)
    emb, valid = embed_manifest(manifest, encoder, variables, policy=policy, batch_size=32, progress=False)
    f = config.fewshot
    return evaluate_fewshot(emb, np.where(valid, manifest.labels, -1), ways=f.ways, shots=f.shots,
                            queries=f.queries, episodes=f.episodes, seed=f.seed)


def run_demo(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
    """Runs the demo in `workdir`; returns {stage name: workdir}."""
    os.makedirs(workdir, exist_ok=True)
    seconds = config.data.clip_seconds
    data_root = ensure_demo_dataset(os.path.join(workdir, "data"), num_classes=DEMO_CLASSES,
                                    clips_per_class=DEMO_CLIPS_PER_CLASS, seconds=seconds, seed=config.seed)
    heldout = ensure_demo_dataset(os.path.join(workdir, "heldout"), num_classes=DEMO_CLASSES,
                                  clips_per_class=HELDOUT_CLIPS_PER_CLASS, seconds=seconds, seed=config.seed + 1000)
    config = copy.deepcopy(config)
    with config.unlocked():
        config.data.root = data_root
    runs: dict[str, str] = {}
    if config.stage == 2 and not config.init_from:
        runs["stage1"] = os.path.join(workdir, "stage1")
        train_and_evaluate(stage1_config(config), runs["stage1"])
        print(f"demo stage1 ({runs['stage1']}): {_last(runs['stage1'])}", flush=True)
        with config.unlocked():
            config.init_from = runs["stage1"]
    name = f"stage{config.stage}"
    runs[name] = os.path.join(workdir, name)
    train_and_evaluate(config, runs[name])
    print(f"demo {name} ({runs[name]}): {_last(runs[name])}", flush=True)

    f = config.fewshot
    results = {stage: fewshot_accuracy(path, heldout, config) for stage, path in runs.items()}
    os.makedirs(os.path.join(workdir, "fewshot"), exist_ok=True)
    with open(os.path.join(workdir, "fewshot", "demo.json"), "w", encoding="utf-8") as out:
        json.dump(results, out, indent=1)
    parts = [f"{'before tuning (stage 1 encoder)' if stage == 'stage1' else 'after ' + stage}: "
             f"{r['accuracy_mean']:.1f} ± {r['ci95']:.1f} %" for stage, r in results.items()]
    print(f"demo few-shot {f.ways}-way {f.shots}-shot on held-out clips ({f.episodes} episodes, chance "
          f"{100 / f.ways:.0f} %): " + "; ".join(parts), flush=True)
    return runs
