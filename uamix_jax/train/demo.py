"""The laptop demo (`--config=configs/stage2.py:demo`): synthesise data, run stage 1, stage 2, then few-shot.

Layout of the workdir: `data/` (the synthesised folder-per-class dataset), `stage1/`, `stage2/` (training workdirs,
each resumable), `fewshot/` (results). With `configs/stage1.py:demo` only stage 1 runs.
"""
from __future__ import annotations

import copy
import os

import ml_collections
from absl import logging

from uamix_jax.data.demo import make_demo_dataset
from uamix_jax.train.loop import train_and_evaluate
from uamix_jax.train.metrics import read_metrics

DEMO_CLASSES = 8
DEMO_CLIPS_PER_CLASS = 24
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


def run_demo(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
    """Runs the demo in `workdir`; returns {stage name: workdir}."""
    os.makedirs(workdir, exist_ok=True)
    data_root = os.path.join(workdir, "data")
    if not os.path.isdir(data_root):
        logging.info("demo: synthesising %d classes x %d clips into %s", DEMO_CLASSES, DEMO_CLIPS_PER_CLASS, data_root)
        make_demo_dataset(data_root + ".tmp", num_classes=DEMO_CLASSES, clips_per_class=DEMO_CLIPS_PER_CLASS,
                          seconds=config.data.clip_seconds, seed=config.seed)
        os.replace(data_root + ".tmp", data_root)
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
    return runs
