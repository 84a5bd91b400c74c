"""The laptop demo (`--config=configs/stage2.py:demo`): synthesise data, run stage 1, stage 2, then few-shot.

Layout of the workdir: `data/` (the tuning set: the 8 `TUNING_CLASSES` of `uamix_jax.data.synthetic`, used without
labels), `fewshot_data/` (the few-shot set: the 6 `HELDOUT_CLASSES`, sounds the tuning never sees, as the paper
evaluates on datasets its tuning did not use), `stage1/`, `stage2/` (training workdirs, each resumable),
`fewshot/demo.json`. With `configs/stage1.py:demo` only stage 1 runs. The few-shot line compares the encoder before
tuning with the tuned one on the same episodes; before tuning it is a random init (stage 1 trains only the head, so
stage 1's encoder is its random initialisation, bitwise).
"""
from __future__ import annotations

import copy
import json
import os

import ml_collections

from uamix_jax.data.layouts import read_dataset
from uamix_jax.data.synthetic import HELDOUT_CLASSES, TUNING_CLASSES, ensure_demo_dataset
from uamix_jax.evaluation.embed import InputPolicy
from uamix_jax.evaluation.encoders import encoder_from
from uamix_jax.evaluation.fewshot_driver import encoder_embedder, score_fewshot
from uamix_jax.evaluation.paired import paired_difference
from uamix_jax.train.metrics import read_metrics
from uamix_jax.train.tune import train_and_evaluate

TUNING_CLIPS_PER_CLASS = 24
FEWSHOT_CLIPS_PER_CLASS = 16
STAGE1_EPOCHS = 40
NAMES = {"stage1": "random init (stage 1 trains only the head)", "stage2": "after stage 2"}


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
    row = read_metrics(os.path.join(workdir, "metrics.jsonl"))[-1]
    return f"step {row['step']}: loss {row['loss']:.4f}, queue neighbour label accuracy {row['nn_accuracy']:.3f}"


def run_demo(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
    """Runs the demo in `workdir`; returns {stage name: workdir}."""
    os.makedirs(workdir, exist_ok=True)
    seconds = config.data.clip_seconds
    data_root = ensure_demo_dataset(os.path.join(workdir, "data"), classes=list(TUNING_CLASSES),
                                    clips_per_class=TUNING_CLIPS_PER_CLASS, seconds=seconds, seed=config.seed)
    fewshot_root = ensure_demo_dataset(os.path.join(workdir, "fewshot_data"), classes=list(HELDOUT_CLASSES),
                                       clips_per_class=FEWSHOT_CLIPS_PER_CLASS, seconds=seconds,
                                       seed=config.seed + 1000)
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
    manifest = read_dataset("folder", fewshot_root)
    policy = InputPolicy(target_length=config.model.target_length, stats=config.data.stats,
                         clip_seconds=config.data.clip_seconds)
    own = {"size": config.model.size, "target_length": 0, "posemb": ""}  # each workdir's own encoder
    embedders = [encoder_embedder(NAMES.get(stage, stage), encoder_from(path, own), policy, batch_size=32)
                 for stage, path in runs.items()]
    results = score_fewshot(embedders, manifest, [(f.ways, f.shots)], queries=f.queries, episodes=f.episodes,
                            seed=f.seed, dataset="demo")
    record = {stage: r.record for stage, r in zip(runs, results)}
    if len(results) == 2:
        record["paired_difference"] = paired_difference(100 * results[1].accuracies, 100 * results[0].accuracies)
    os.makedirs(os.path.join(workdir, "fewshot"), exist_ok=True)
    with open(os.path.join(workdir, "fewshot", "demo.json"), "w", encoding="utf-8") as out:
        json.dump(record, out, indent=1)
    parts = [f"{r.label}: {r.record['accuracy_mean']:.1f} ± {r.record['ci95']:.1f} %" for r in results]
    print(f"demo few-shot {f.ways}-way {f.shots}-shot on {manifest.num_classes} classes the tuning never saw "
          f"({f.episodes} episodes, chance {100 / f.ways:.0f} %): " + "; ".join(parts), flush=True)
    return runs
