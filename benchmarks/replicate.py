"""The paper's Tables 2-3 and Fig. 5 in miniature, end to end on one machine: MAE → uaMix tuning → few-shot, over seeds.

    python benchmarks/replicate.py --out DIR [--quick] [--seeds 3] [--unlabelled FOLDER] [--eval NAME=FOLDER]...
                                   [--variants t_cutmix,no_mix,mixup_ls,tf_cutmix]

1. Data: `benchmarks/offline_audio.py` renders real audio from Debian packages into DIR/data (an unlabelled tuning
   corpus and four labelled few-shot sets: words, speakers, instruments, percussion, whose classes the corpus does not
   contain). `--unlabelled` (any folder of audio, read recursively) and `--eval NAME=FOLDER` (the `folder` layout,
   repeatable) replace them with your own sounds. Each eval set's classes are split into a dev half and a test half
   (`uamix_jax.data.layouts.class_halves`: by the SHA-256 of the class names, so the same names always split the same
   way); a set without 2 × ways classes is an error naming it. Every choice (the budgets and learning rates below) is
   made on dev classes; the table and the deltas use test classes only.
2. Stages, each a training workdir under DIR/stages/<name>-<fingerprint> (the fingerprint hashes everything that
   changes a stage's result: its config file and overrides, its parent stage's fingerprint, the corpus's file list
   and sizes, the seed; a changed setting starts a new workdir and never resumes or skips into another's; the same
   settings find their finished workdir and skip it, or resume an unfinished one):
   - the MAE (`configs/pretrain_mae.py:cpu`, seed 0), shared by every variant and seed;
   - per seed s and variant v: stage 1 (head only, frozen encoder, from the MAE) and stage 2 (top half + head, from
     stage 1), `t_cutmix` = uaMix-MAE, `no_mix`, `mixup_ls` (MixUp + label smoothing 0.1), `tf_cutmix`.
   What a seed changes: the head's initialisation and the queue's random start, the augmentation and mixing draws of
   every step (the step key), and the order of the data (the pipeline's shuffle); the MAE and the episodes are the
   same for every seed. The command line of every stage is written to DIR/commands.sh (`python -m uamix_jax.main`;
   run here in-process).
3. Learning curves: 5-way 1-shot on the dev classes of every eval set, every `curve_every` steps of MAE pretraining
   and of each stage 2 (the trainer's periodic few-shot evaluation), in DIR/replicate.json and DIR/curves.png.
4. Few-shot on test classes: 5-way 1-shot and 5-way 5-shot, 15 queries, 600 seeded episodes, nearest centroid on
   L2-normalised embeddings, every encoder of a set scored on the same episodes (`fewshot_driver.score_fewshot`):
   `log-mel` (mean and std over the clip's frames of the normalised fbank, no network), `MAE`, and each seed's tuned
   encoders (stage 2's). Paired deltas (`replicate_report.compute_deltas`): every tuned variant against the MAE and
   T-CutMix against each other variant, per eval set and over the sets, with the seed-level t-interval. The same
   deltas on dev classes go to `dev_deltas` (what the budget was chosen on).
5. DIR/replicate.json ({rows, deltas, dev_deltas, classes, curves, config, stages, timings, seconds}), replicate.md
   (the tables with Δ rows), replicate.png (bars) and curves.png.

The paper's recipe and what is scaled here (budgets in steps, not epochs, so time does not grow with the folders;
`--quick` in brackets):
  - encoder: AudioMAE ViT-B/16 (12 blocks, 768 wide) at T = 1024 pretrained on AudioSet-2M → configs/pretrain_mae.py:cpu
    ('mini': ViT-Ti width 192, 4 blocks, T = 256 frames = 2.56 s, a 2-block 128-wide decoder, lr 1.5e-3), pretrained
    for 1,200 [150] steps of batch 64 on the corpus (~1,600 clips [~700]).
  - stage 1: 40 epochs of AudioSet-20K (~1,600 steps of batch 512), lr 1e-4 → 60 [20] steps of batch 32, lr 1e-3
    (a fresh head on a small encoder; 1e-4 barely moves it in so few steps).
  - stage 2: 160 epochs (~26,000 steps of batch 128), lr 1e-4 × 0.65^(L−i) → 300 [40] steps of batch 32 (~6 passes
    over the corpus) at peak lr 1e-3 with the same layer decay (L = 4; blocks 2-3, `norm` and the head train).
  - head: projector 2048-2048-256, predictor 4096-256 → 512-512-128 and 512-128 (the encoder is 4x narrower).
  - queue: 65,536 rows (> AudioSet-20K's 20,550 clips) → 1,024 [512] rows, below the corpus size so neighbours are
    recent; stage-2 top-k 20 → 5 (a 64x smaller queue holds far fewer near neighbours per clip).
  - τ = 0.15, EMA 0.99 (stage 2), T-CutMix α = 1 with the paper's √(1−λ) width, AdamW (0.9, 0.95), warmup 20 %
    + cosine: unchanged. Mix groups of 16 (the base config's; smaller when a device's batch is smaller).
  - seeds: 3 [1] training seeds per variant; the paper reports one run.
How the time is split, and why (the default run: about 150 minutes on 2 CPU cores). Tuning is 12 runs (3 seeds × 4
variants) of 60 + 300 steps, about 90 minutes with their learning curves, and cannot shrink without dropping a
variant, a seed or the budget at which tuning moves the encoder; the MAE, trained once, gets the rest: 1,200 steps,
about 30 minutes. On dev classes, a longer MAE schedule (2,400 steps, stopped at 1,050) reached 5-way 1-shot
accuracies of 37/42/44 % (words), 25/31/30 % (speakers), 33/37/32 % (instruments) and 26/26/27 % (percussion) at
steps 300/600/900: flat after about 600 steps on three of the four sets, so 1,200 steps with the whole cosine
schedule loses little. Stage 2 keeps 300 steps at peak lr 1e-3: the default run's dev-class curves and dev deltas
(`dev_deltas`) show whether that budget moves the encoder (the README's "Does it work?"). Three seeds is the fewest
whose seed-level interval is of usable width (t = 4.30; with two, t = 12.7). Stage 1 only trains a head on a frozen
encoder and stays short.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import importlib.util
import json
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

try:
    import uamix_jax  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # offline_audio, replicate_report beside this file

import jax  # noqa: E402
import numpy as np  # noqa: E402

from replicate_report import (IDENTITY_STATS, LogMelStats, bar_chart, compute_deltas, curves_chart,  # noqa: E402
                              markdown_table, read_curve)
from uamix_jax.audio.features import resolve_stats  # noqa: E402
from uamix_jax.data.layouts import class_halves, read_dataset, select_classes  # noqa: E402
from uamix_jax.evaluation.embed import InputPolicy  # noqa: E402
from uamix_jax.evaluation.encoders import LoadedEncoder, load_encoder  # noqa: E402
from uamix_jax.evaluation.fewshot_driver import Embedder, encoder_embedder, score_fewshot  # noqa: E402
from uamix_jax.interop.workdir import finished_steps, read_workdir_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
ENCODER_NAMES = ("log-mel", "MAE", "uaMix-MAE (T-CutMix)", "No-Mix", "MixUp+LS", "TF-CutMix")
# variant key → (encoder name, mixing overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "t_cutmix": ("uaMix-MAE (T-CutMix)", {"mix.method": "t_cutmix", "mix.label_smoothing": 0.0}),
    "no_mix": ("No-Mix", {"mix.method": "none", "mix.label_smoothing": 0.0}),
    "mixup_ls": ("MixUp+LS", {"mix.method": "mixup", "mix.label_smoothing": 0.1}),
    "tf_cutmix": ("TF-CutMix", {"mix.method": "tf_cutmix", "mix.label_smoothing": 0.0}),
}
QUERIES = 15
STAGE_VERSION = 1  # bump when what a stage computes changes in a way its settings do not show


@dataclasses.dataclass(frozen=True)
class Budget:
    """Sizes and steps of one run (module docstring); the model and T are the MAE preset's."""

    name: str
    data_size: str
    mae_steps: int
    stage1_steps: int
    stage2_steps: int
    queue_size: int
    seeds: int
    share_stage1: bool
    mae_batch: int = 64  # the :cpu preset's global batch
    batch: int = 32  # tuning's global batch
    stage1_lr: float = 1e-3
    stage2_lr: float = 1e-3
    top_k: int = 5
    head: tuple[int, int, int] = (512, 128, 512)  # projector hidden, projection, predictor hidden
    mae_preset: str = "cpu"  # configs/pretrain_mae.py:<preset>: the model, T, decoder, lr and input settings
    settings: tuple[tuple[int, int], ...] = ((5, 1), (5, 5))  # (ways, shots); the first is the curves'
    episodes: int = 600
    curve_every_mae: int = 300  # steps between dev-class few-shot evaluations (and the end)
    curve_every_stage2: int = 60
    curve_episodes: int = 300


BUDGETS = {
    "default": Budget("default", "default", mae_steps=1200, stage1_steps=60, stage2_steps=300, queue_size=1024,
                      seeds=3, share_stage1=False),
    "quick": Budget("quick", "quick", mae_steps=150, stage1_steps=20, stage2_steps=40, queue_size=512, seeds=1,
                    share_stage1=True, curve_every_mae=50, curve_every_stage2=20, curve_episodes=100,
                    episodes=300),
    # the test suite's: the 4-block 32-wide test ViT at T = 128 on tiny synthetic folders, a few steps of everything
    "toy": Budget("toy", "quick", mae_steps=4, stage1_steps=2, stage2_steps=2, mae_batch=16, batch=16, queue_size=32,
                  seeds=2, share_stage1=True, head=(32, 16, 32), top_k=2, mae_preset="test",
                  settings=((2, 1), (2, 2)), episodes=40, curve_every_mae=2, curve_every_stage2=1,
                  curve_episodes=20),
}


def _report(message: str) -> None:
    print(f"[replicate] {message}", flush=True)


# -------------------------------------------------------------------------------------------------------- stages
def load_config(spec: str):
    """`configs/<file>.py[:arg]` → its get_config(arg), as `--config=` would load it."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(f"_replicate_config_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    config.lock()  # as the command line locks it: an override of a field that does not exist is an error
    return config


def folder_fingerprint(root: str) -> str:
    """SHA-256 over a folder's audio files (relative paths and sizes): what a stage trained on."""
    manifest = read_dataset("unlabelled", root)
    h = hashlib.sha256()
    for path in manifest.paths.tolist():
        h.update(f"{os.path.relpath(path, root)}|{os.path.getsize(path)}\n".encode())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training run: its config file (+ variant) and overrides (dotted keys), in a workdir named by what it is.

    `fingerprint` hashes the whole config as it will run (the file's values with the overrides applied; init_from,
    the parent's workdir, and `progress` left out), the parent stage's fingerprint, the training data's fingerprint
    and STAGE_VERSION; the workdir is <out>/stages/<name>-<fingerprint[:12]>.
    """

    name: str
    config: str
    overrides: dict[str, Any]
    out: str
    data: str  # folder_fingerprint of the training data
    parent: Stage | None = None

    def resolved(self):
        """The config this stage runs: the file's get_config with the overrides and init_from applied."""
        config = load_config(self.config)
        config.update_from_flattened_dict(self.settings())
        return config

    @functools.cached_property
    def fingerprint(self) -> str:
        values = self.resolved().to_dict()
        values.pop("init_from", None)
        values.pop("progress", None)
        record = {"config": values, "parent": self.parent.fingerprint if self.parent else None, "data": self.data,
                  "version": STAGE_VERSION}
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()

    @property
    def workdir(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        return os.path.join(self.out, "stages", f"{slug}-{self.fingerprint[:12]}")

    def settings(self) -> dict[str, Any]:
        return {**self.overrides, **({"init_from": self.parent.workdir} if self.parent else {})}

    def command(self) -> str:
        flags = " ".join(f"--config.{k}={shlex.quote(str(v))}" for k, v in self.settings().items())
        return f"python -m uamix_jax.main --config={self.config} --workdir={shlex.quote(self.workdir)} {flags}"

    def done(self) -> bool:
        return self.overrides["train.total_steps"] in finished_steps(self.workdir)

    def seconds(self) -> float:
        """Seconds spent training this stage, over every run that worked on it (0 before the first)."""
        path = os.path.join(self.workdir, "replicate_stage.json")
        return json.load(open(path, encoding="utf-8"))["seconds"] if os.path.isfile(path) else 0.0

    def run(self) -> float:
        """Trains in-process (what `self.command()` does) unless finished; returns the seconds spent now."""
        if self.done():
            _report(f"{self.name}: finished in {self.workdir}, reused")
            return 0.0
        from uamix_jax.main import task_function

        config = self.resolved()
        _report(f"{self.name}: {self.command()}")
        start = time.perf_counter()
        task_function(config.task)(config, self.workdir)
        spent = time.perf_counter() - start
        record = {"seconds": self.seconds() + spent, "name": self.name, "fingerprint": self.fingerprint}
        with open(os.path.join(self.workdir, "replicate_stage.json"), "w", encoding="utf-8") as f:
            json.dump(record, f)
        return spent


def mix_group(batch: int) -> int:
    """The base config's mix group of 16, or the largest divisor of the per-device batch below it."""
    return math.gcd(16, batch // jax.device_count())


def _checkpoint_every(steps: int) -> int:
    """A few resume points in a long stage; a short one (<= 100 steps) saves only at its end."""
    return steps if steps <= 100 else -(-steps // 4)


def curve_overrides(budget: Budget, every: int, eval_sets: dict[str, str], stats: Any, clip_seconds: float
                    ) -> dict[str, Any]:
    """The trainer's periodic few-shot evaluation on the dev classes of every eval set (the learning curves)."""
    ways, _ = budget.settings[0]
    return {"fewshot.every": every, "fewshot.ways": ways, "fewshot.shots": 1, "fewshot.queries": QUERIES,
            "fewshot.episodes": budget.curve_episodes, "fewshot.seed": 0,
            "fewshot.data.root": ",".join(f"{n}={r}" for n, r in eval_sets.items()), "fewshot.data.classes": "dev",
            "fewshot.data.stats": stats, "fewshot.data.clip_seconds": clip_seconds, "eval.batch_size": 64}


def mae_stage(out: str, budget: Budget, corpus: str, data: str, eval_sets: dict[str, str], progress: bool) -> Stage:
    preset = os.path.join(CONFIGS, "pretrain_mae.py") + f":{budget.mae_preset}"
    base = load_config(preset)
    overrides: dict[str, Any] = {
        "data.name": "unlabelled", "data.root": corpus, "data.worker_count": 0, "train.total_steps": budget.mae_steps,
        "train.global_batch": budget.mae_batch, "train.checkpoint_every": _checkpoint_every(budget.mae_steps),
        "train.log_every": max(min(50, budget.mae_steps), 1), "progress": progress,
        **curve_overrides(budget, budget.curve_every_mae, eval_sets, base.data.stats, base.data.clip_seconds)}
    return Stage("MAE pretraining", preset, overrides, out, data)


def tune_stage(out: str, budget: Budget, corpus: str, data: str, m: dict[str, Any], stage: int, variant: str,
               seed: int, parent: Stage, eval_sets: dict[str, str], progress: bool) -> Stage:
    """Stage `stage` of `variant` (VARIANTS) for training seed `seed`, from `parent`, with the model and input of
    the MAE whose config (as its workdir records it) is `m`."""
    steps = budget.stage1_steps if stage == 1 else budget.stage2_steps
    proj_hidden, proj, pred_hidden = budget.head
    stats = tuple(m["data"]["stats"]) if isinstance(m["data"]["stats"], list) else m["data"]["stats"]
    overrides: dict[str, Any] = {
        "seed": seed,
        "model.size": m["model"]["size"], "model.target_length": m["model"]["target_length"],
        "model.posemb": m["model"].get("posemb", "prefix"),
        "head.proj_hidden_dim": proj_hidden, "head.proj_dim": proj, "head.pred_hidden_dim": pred_hidden,
        "data.name": "unlabelled", "data.root": corpus, "data.split": "", "data.clip_seconds": m["data"]["clip_seconds"],
        "data.stats": stats, "data.worker_count": 0,
        "nnclr.queue_size": budget.queue_size, "mix.group": mix_group(budget.batch),
        "optim.lr": budget.stage1_lr if stage == 1 else budget.stage2_lr,
        "train.total_steps": steps, "train.global_batch": budget.batch, "train.log_every": max(min(10, steps), 1),
        "train.checkpoint_every": _checkpoint_every(steps), "progress": progress,
        **VARIANTS[variant][1]}
    if stage == 2:
        overrides["nnclr.top_k"] = budget.top_k
        overrides.update(curve_overrides(budget, budget.curve_every_stage2, eval_sets, stats,
                                         m["data"]["clip_seconds"]))
    name = f"{VARIANTS[variant][0]} stage {stage} seed {seed}"
    return Stage(name, os.path.join(CONFIGS, f"stage{stage}.py"), overrides, out, data, parent)


# ------------------------------------------------------------------------------------------------------ few-shot
def class_split(eval_sets: dict[str, str], ways: int) -> dict[str, dict[str, list[str]]]:
    """{set: {"dev": [...], "test": [...]}} (`class_halves`); a set without `ways` classes in each half is an error."""
    out = {}
    for name, root in eval_sets.items():
        dev, test = class_halves(read_dataset("folder", root).class_names)
        if min(len(dev), len(test)) < ways:
            raise ValueError(f"--eval {name}={root}: {len(dev) + len(test)} classes split into {len(dev)} dev and "
                             f"{len(test)} test classes; {ways}-way episodes need at least {2 * ways} classes")
        out[name] = {"dev": dev, "test": test}
    return out


def _embedder(label: str, encoder_path: str | None, *, target_length: int, stats: Any, cache_dir: str,
              progress: bool) -> Embedder:
    """The driver's embedder of the log-mel baseline (encoder_path None) or a workdir's encoder."""
    if encoder_path is None:
        loaded, policy_stats = LoadedEncoder(LogMelStats(target_length, resolve_stats(stats)), {}, "log-mel"), \
            IDENTITY_STATS
    else:
        encoder, variables = load_encoder(encoder_path, target_length=target_length)
        loaded, policy_stats = LoadedEncoder(encoder, variables, encoder_path), stats
    policy = InputPolicy(target_length=target_length, stats=policy_stats, crop="centre")  # the clip's centre T frames
    return encoder_embedder(label, loaded, policy, cache_dir=cache_dir, batch_size=64, progress=progress)


def score_sets(embedders: dict[tuple[str, int | None], Embedder], eval_sets: dict[str, str], half: str, *,
               budget: Budget) -> tuple[list[dict[str, Any]], dict[tuple, np.ndarray]]:
    """Every encoder ((name, seed) → its embedder) on the `half` ('dev' or 'test') classes of every set, all on the
    same episodes per set and setting: (rows, {(name, seed, set, ways, shots): accuracies [E]})."""
    rows, scores = [], {}
    by_label = {e.label: key for key, e in embedders.items()}
    for set_name, root in eval_sets.items():
        manifest = select_classes(read_dataset("folder", root), half)
        spread: dict[str, float] = {}

        def note(e: Embedder, emb: np.ndarray, valid: np.ndarray) -> None:
            unit = emb[valid] / np.maximum(np.linalg.norm(emb[valid], axis=1, keepdims=True), 1e-12)
            spread[e.label] = float(np.linalg.norm(unit.mean(axis=0)))  # 1: every clip embeds alike; ~0: spread

        results = score_fewshot(list(embedders.values()), manifest, budget.settings, queries=QUERIES,
                                episodes=budget.episodes, seed=0, dataset=set_name, on_embedded=note)
        class_names = sorted(manifest.class_names[c] for c in np.unique(manifest.labels))
        for res in results:
            name, seed = by_label[res.label]
            r = res.record
            scores[(name, seed, set_name, r["ways"], r["shots"])] = res.accuracies
            rows.append({"encoder": name, "seed": seed, "eval": set_name, "classes": half, "class_names": class_names,
                         "ways": r["ways"], "shots": r["shots"], "accuracy_mean": r["accuracy_mean"],
                         "ci95": r["ci95"], "queries_min": r["queries_min"], "num_classes": r["num_classes"],
                         "num_clips": r["num_clips"], "mean_unit_norm": spread[res.label],
                         "episodes_sha256": r["episodes_sha256"]})
    return rows, scores


# ----------------------------------------------------------------------------------------------------------- main
def replicate(out: str, *, budget: str | Budget = "default", unlabelled: str | None = None,
              eval_sets: dict[str, str] | None = None, variants: Sequence[str] = tuple(VARIANTS),
              seeds: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Runs the whole comparison into `out` (module docstring); returns what replicate.json holds."""
    start = time.perf_counter()
    b = BUDGETS[budget] if isinstance(budget, str) else budget
    seed_list = list(range(b.seeds if seeds is None else seeds))
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    if not seed_list:
        raise ValueError("--seeds must be at least 1")
    eval_sets = dict(eval_sets or {})
    timings: dict[str, float] = {}
    if unlabelled is None or not eval_sets:
        from offline_audio import build_offline_audio

        t0 = time.perf_counter()
        built = build_offline_audio(os.path.join(out, "data"), size=b.data_size, progress=progress)
        timings["data"] = time.perf_counter() - t0
        unlabelled = unlabelled or built.unlabelled
        eval_sets = eval_sets or built.eval_sets
    unlabelled = os.path.abspath(unlabelled)
    eval_sets = {name: os.path.abspath(root) for name, root in eval_sets.items()}
    classes = class_split(eval_sets, b.settings[0][0])
    data = folder_fingerprint(unlabelled)

    mae = mae_stage(out, b, unlabelled, data, eval_sets, progress)
    stages: list[Stage] = [mae]
    timings[mae.name] = mae.run()
    m = read_workdir_config(mae.workdir)
    tuned: dict[tuple[str, int], Stage] = {}
    for seed in seed_list:
        shared = None
        for v in variants:
            if b.share_stage1:  # one stage 1 (without mixing) per seed for every variant
                if shared is None:
                    shared = tune_stage(out, b, unlabelled, data, m, 1, "no_mix", seed, mae, eval_sets, progress)
                    shared = dataclasses.replace(shared, name=f"shared stage 1 seed {seed}")
                    stages.append(shared)
                    timings[shared.name] = shared.run()
                stage1 = shared
            else:
                stage1 = tune_stage(out, b, unlabelled, data, m, 1, v, seed, mae, eval_sets, progress)
                stages.append(stage1)
                timings[stage1.name] = stage1.run()
            stage2 = tune_stage(out, b, unlabelled, data, m, 2, v, seed, stage1, eval_sets, progress)
            stages.append(stage2)
            timings[stage2.name] = stage2.run()
            tuned[(VARIANTS[v][0], seed)] = stage2
    with open(os.path.join(out, "commands.sh"), "w", encoding="utf-8") as f:
        f.write("# the training stages of benchmarks/replicate.py, as command lines\n")
        f.writelines(s.command() + "\n" for s in stages)

    t0 = time.perf_counter()
    encoders: dict[tuple[str, int | None], str | None] = {("log-mel", None): None, ("MAE", None): mae.workdir}
    encoders.update({key: s.workdir for key, s in tuned.items()})
    embedders = {(name, seed): _embedder(f"{name} | {seed}", path, target_length=int(m["model"]["target_length"]),
                                         stats=m["data"]["stats"], cache_dir=os.path.join(out, "embeddings"),
                                         progress=progress) for (name, seed), path in encoders.items()}
    rows, scores = score_sets(embedders, eval_sets, "test", budget=b)
    dev_rows, dev_scores = score_sets(embedders, eval_sets, "dev", budget=b)
    names = list(dict.fromkeys(name for name, _ in tuned))
    deltas = compute_deltas(scores, names, seed_list, list(eval_sets), b.settings)
    dev_deltas = compute_deltas(dev_scores, names, seed_list, list(eval_sets), b.settings)
    timings["few-shot"] = time.perf_counter() - t0
    curves = [{"encoder": "MAE", "seed": None, "points": read_curve(mae.workdir)}]
    curves += [{"encoder": name, "seed": seed, "points": read_curve(s.workdir)} for (name, seed), s in tuned.items()]

    result = {
        "rows": rows, "deltas": deltas, "dev_rows": dev_rows, "dev_deltas": dev_deltas, "classes": classes,
        "curves": curves,
        "config": {"budget": dataclasses.asdict(b), "seeds": seed_list, "unlabelled": unlabelled, "eval": eval_sets,
                   "variants": {VARIANTS[v][0]: VARIANTS[v][1] for v in variants}, "queries": QUERIES,
                   "model": m["model"], "devices": f"{jax.device_count()} x {jax.devices()[0].platform}"},
        "stages": {s.name: {"workdir": s.workdir, "fingerprint": s.fingerprint, "command": s.command(),
                            "trained_seconds": s.seconds()} for s in stages},
        "timings": timings,
        "seconds": time.perf_counter() - start,
    }
    with open(os.path.join(out, "replicate.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=str)
    with open(os.path.join(out, "replicate.md"), "w", encoding="utf-8") as f:
        f.write(markdown_table(rows, deltas))
    bar_chart(rows, os.path.join(out, "replicate.png"))
    curves_chart(curves, os.path.join(out, "curves.png"), ways=b.settings[0][0])
    _report(f"done in {result['seconds'] / 60:.1f} min: {out}/replicate.{{json,md,png}}, curves.png\n\n"
            f"{markdown_table(rows, deltas)}")
    return result


def _named_folder(text: str) -> tuple[str, str]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"--eval wants NAME=FOLDER, got {text!r}")
    return name, folder


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (re-running reuses its finished stages)")
    parser.add_argument("--quick", action="store_true", help="the ~12-minute version (one seed, fewer steps and clips)")
    parser.add_argument("--toy", action="store_true", help=argparse.SUPPRESS)  # the test suite's size
    parser.add_argument("--seeds", type=int, default=None, help="training seeds per variant (default: 3; --quick 1)")
    parser.add_argument("--unlabelled", help="a folder of audio (read recursively) to pretrain and tune on")
    parser.add_argument("--eval", action="append", type=_named_folder, default=[], metavar="NAME=FOLDER",
                        help="a labelled few-shot set in the folder layout (<class>/<clip>); repeatable")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma separated, of {list(VARIANTS)}")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (training stages included)")
    parser.add_argument("--mae-steps", type=int, default=0, help="override the budget's MAE pretraining steps")
    parser.add_argument("--stage2-steps", type=int, default=0, help="override the budget's stage-2 steps")
    parser.add_argument("--stage2-lr", type=float, default=0.0, help="override the budget's stage-2 peak lr")
    args = parser.parse_args(argv)
    budget = BUDGETS["toy" if args.toy else "quick" if args.quick else "default"]
    budget = dataclasses.replace(budget, mae_steps=args.mae_steps or budget.mae_steps,
                                 stage2_steps=args.stage2_steps or budget.stage2_steps,
                                 stage2_lr=args.stage2_lr or budget.stage2_lr)
    from offline_audio import MissingPackagesError

    try:
        replicate(args.out, budget=budget, unlabelled=args.unlabelled, eval_sets=dict(args.eval) or None,
                  variants=[v.strip() for v in args.variants.split(",") if v.strip()], seeds=args.seeds,
                  progress=not args.no_progress)
    except MissingPackagesError as err:
        sys.exit(str(err))


if __name__ == "__main__":
    main()
