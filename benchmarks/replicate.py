"""The paper's Tables 2-3 and Fig. 5 in miniature, end to end on one machine: MAE → uaMix tuning → few-shot.

    python benchmarks/replicate.py --out DIR [--quick] [--unlabelled FOLDER] [--eval NAME=FOLDER]...
                                   [--variants t_cutmix,no_mix,mixup_ls,tf_cutmix]

1. Data: `benchmarks/offline_audio.py` renders real audio from Debian packages into DIR/data (an unlabelled tuning
   corpus and four labelled few-shot sets: words, speakers, instruments, percussion, whose classes the corpus does not
   contain). `--unlabelled` (any folder of audio, read recursively) and `--eval NAME=FOLDER` (the `folder` layout,
   repeatable) replace them with your own sounds.
2. DIR/mae: a small MAE pretrained on the corpus (`configs/pretrain_mae.py:cpu`, task 'pretrain'). Then, per variant,
   DIR/<variant>/stage1 (head only, frozen encoder, from DIR/mae) and DIR/<variant>/stage2 (top half + head, from
   stage 1): `t_cutmix` = uaMix-MAE, `no_mix`, `mixup_ls` (MixUp + label smoothing 0.1), `tf_cutmix`. Every stage
   is a training workdir; a stage whose final checkpoint exists is skipped, an unfinished one resumes. The command
   line of every stage is written to DIR/commands.sh (`python -m uamix_jax.main ...`; run here in-process).
3. Few-shot 5-way 1-shot and 5-way 5-shot, 15 queries, 600 seeded episodes, nearest centroid on L2-normalised
   embeddings (`uamix_jax.evaluation`), on every eval set for: `log-mel` (mean and std over the clip's frames of the
   normalised fbank, no network), `MAE`, and each tuned encoder (stage 2's). Embeddings are cached in DIR/embeddings.
   Each row also has `mean_unit_norm`, ‖mean of the set's L2-normalised embeddings‖: near 1 when every clip embeds
   alike (a collapsed or anisotropic representation), near 0 when the embeddings spread over the sphere.
4. DIR/replicate.json ({"rows": [{encoder, eval, ways, shots, accuracy_mean, ci95}], "config", "stages", "seconds"}),
   DIR/replicate.md (a row per encoder, a column per eval set, mean ± 95 % CI) and DIR/replicate.png (bars).

The paper's recipe and what is scaled here (budgets in steps, not epochs, so the time does not grow with the folders;
`--quick` in brackets):
  - encoder: AudioMAE ViT-B/16 (12 blocks, 768 wide) at T = 1024 pretrained on AudioSet-2M → the MAE preset's ViT
    (configs/pretrain_mae.py:cpu: 'mini', ViT-Ti width 192, 4 blocks, T = 256 frames = 2.56 s, a 2-block 128-wide
    decoder, lr 1.5e-3), pretrained for 800 [100] steps of batch 64 on the corpus (~1,600 clips [~700]).
  - stage 1: 40 epochs of AudioSet-20K (~1,600 steps of batch 512), lr 1e-4 → 60 [20, shared] steps of batch 32,
    lr 1e-3 (a fresh head on a small encoder; 1e-4 barely moves it in so few steps).
  - stage 2: 160 epochs (~26,000 steps of batch 128), lr 1e-4 × 0.65^(L−i) → 120 [20] steps of batch 32 (~2.4
    passes over the corpus), peak lr 3e-4 with the same layer decay (L = 4; blocks 2-3, `norm` and the head train).
    Measured: these 120 steps at 3e-4 left every tuned encoder within about a point of the MAE on all four sets;
    `--stage2-steps 300 --stage2-lr 1e-3` (T-CutMix) raised 5-way 5-shot accuracy by 2-4 points on speakers,
    instruments and percussion (README, "Does it work?").
  - head: projector 2048-2048-256, predictor 4096-256 → 512-512-128 and 512-128 (the encoder is 4x narrower).
  - queue: 65,536 rows (> AudioSet-20K's 20,550 clips) → 1,024 [512] rows, below the corpus size so neighbours are
    recent; stage-2 top-k 20 → 5 (a 64x smaller queue holds far fewer near neighbours per clip).
  - τ = 0.15, EMA 0.99 (stage 2), T-CutMix α = 1 with the paper's √(1−λ) width, AdamW (0.9, 0.95), warmup 20 %
    + cosine: unchanged. Mix groups of 16 (the base config's; smaller when a device's batch is smaller).
  - few-shot: 600 episodes, 5-way, 15 queries, nearest centroid: unchanged; inputs centre-cropped to the MAE's T.
Time, measured from a cold start on this project's 2-core machine while other jobs shared it: default 37.8 min wall
(2,390 CPU-seconds: data 52 s, MAE 20 min, stages 1 + 2 of the four variants 15 min, few-shot 2 min), --quick
10.7 min wall (575 CPU-seconds). A second run over the same DIR reuses everything: 23 s.
`--quick` shares one stage 1 (trained without mixing) among the variants: stage 1 leaves the encoder bitwise
unchanged, so the encoders that few-shot measures differ only through stage 2, where each variant mixes its own way;
the shared stage only gives every variant the same starting head and queue. The default run trains stage 1 per
variant, as the paper does.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

try:
    import uamix_jax  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # offline_audio beside this file

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from uamix_jax.audio.features import resolve_stats  # noqa: E402
from uamix_jax.data.layouts import read_dataset  # noqa: E402
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
SETTINGS = ((5, 1), (5, 5))  # (ways, shots)
QUERIES = 15


@dataclasses.dataclass(frozen=True)
class Budget:
    """Sizes and steps of one run (module docstring); the model and T are the MAE preset's."""

    data_size: str
    mae_steps: int
    stage1_steps: int
    stage2_steps: int
    queue_size: int
    share_stage1: bool
    mae_batch: int = 64  # the :cpu preset's global batch
    batch: int = 32  # tuning's global batch
    stage1_lr: float = 1e-3
    stage2_lr: float = 1e-3
    top_k: int = 5
    head: tuple[int, int, int] = (512, 128, 512)  # projector hidden, projection, predictor hidden
    mae_preset: str = "cpu"  # configs/pretrain_mae.py:<preset>: the model, T, decoder, lr and input settings
    episodes: int = 600


BUDGETS = {
    # the run behind the README's "Does it work?" table (37.8 min on 2 shared CPU cores, from a cold start)
    "default": Budget("default", mae_steps=800, stage1_steps=60, stage2_steps=120, queue_size=1024,
                      share_stage1=False, stage2_lr=3e-4),
    "quick": Budget("quick", mae_steps=100, stage1_steps=20, stage2_steps=20, queue_size=512, share_stage1=True),
    # the test suite's: the 4-block 32-wide test ViT at T = 128 on tiny synthetic folders, a few steps of everything
    "toy": Budget("toy", mae_steps=4, stage1_steps=2, stage2_steps=2, mae_batch=16, batch=16, queue_size=32,
                  share_stage1=False, head=(32, 16, 32), top_k=2, mae_preset="test"),
}


def _say(message: str) -> None:
    print(f"[replicate] {message}", flush=True)


# -------------------------------------------------------------------------------------------------------- stages
def load_config(spec: str):
    """`configs/<file>.py[:arg]` → its get_config(arg), as `--config=` would load it."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(f"_replicate_config_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


@dataclasses.dataclass
class Stage:
    """One training run: its config file (+ variant), overrides (dotted keys) and workdir."""

    name: str
    config: str
    overrides: dict[str, Any]
    workdir: str

    def command(self) -> str:
        flags = " ".join(f"--config.{k}={shlex.quote(str(v))}" for k, v in self.overrides.items())
        return f"python -m uamix_jax.main --config={self.config} --workdir={shlex.quote(self.workdir)} {flags}"

    def done(self) -> bool:
        """True when the final checkpoint exists; an error when the workdir was trained further (another budget)."""
        steps, total = finished_steps(self.workdir), self.overrides["train.total_steps"]
        if steps and steps[-1] > total:
            raise ValueError(f"{self.workdir} holds a checkpoint at step {steps[-1]}, past this run's {total} steps: "
                             f"it was made with another budget; use a new --out")
        return total in steps

    def run(self) -> float:
        """Trains in-process (what `self.command()` does); returns the seconds spent, 0 when already finished."""
        if self.done():
            _say(f"{self.name}: finished checkpoint in {self.workdir}, skipped")
            return 0.0
        from uamix_jax.main import task_function

        config = load_config(self.config)
        config.update_from_flattened_dict(self.overrides)
        _say(f"{self.name}: {self.command()}")
        start = time.perf_counter()
        task_function(config.task)(config, self.workdir)
        return time.perf_counter() - start


def mix_group(batch: int) -> int:
    """The base config's mix group of 16, or the largest divisor of the per-device batch below it."""
    per_device = batch // jax.device_count()
    return math.gcd(16, per_device)


def _checkpoint_every(steps: int) -> int:
    """A few resume points in a long stage; a short one (<= 100 steps) saves only at its end."""
    return steps if steps <= 100 else -(-steps // 4)


def mae_stage(out: str, budget: Budget, corpus: str) -> Stage:
    overrides: dict[str, Any] = {
        "data.name": "unlabelled", "data.root": corpus, "train.total_steps": budget.mae_steps,
        "train.global_batch": budget.mae_batch, "progress": True,
        "train.checkpoint_every": _checkpoint_every(budget.mae_steps),
        "train.log_every": max(min(50, budget.mae_steps), 1)}
    return Stage("MAE pretraining", os.path.join(CONFIGS, "pretrain_mae.py") + f":{budget.mae_preset}", overrides,
                 os.path.join(out, "mae"))


def tune_stage(out: str, budget: Budget, corpus: str, mae: dict[str, Any], stage: int, variant: str,
               init_from: str) -> Stage:
    """Stage `stage` of `variant` (VARIANTS) from `init_from`, with the MAE's model and input settings."""
    steps = budget.stage1_steps if stage == 1 else budget.stage2_steps
    proj_hidden, proj, pred_hidden = budget.head
    overrides: dict[str, Any] = {
        "init_from": init_from,
        "model.size": mae["model"]["size"], "model.target_length": mae["model"]["target_length"],
        "model.posemb": mae["model"].get("posemb", "prefix"),
        "head.proj_hidden_dim": proj_hidden, "head.proj_dim": proj, "head.pred_hidden_dim": pred_hidden,
        "data.name": "unlabelled", "data.root": corpus, "data.split": "",
        "data.clip_seconds": mae["data"]["clip_seconds"], "data.stats": mae["data"]["stats"],
        "data.worker_count": mae["data"].get("worker_count", 0),
        "nnclr.queue_size": budget.queue_size, "mix.group": mix_group(budget.batch),
        "optim.lr": budget.stage1_lr if stage == 1 else budget.stage2_lr,
        "train.total_steps": steps, "train.global_batch": budget.batch, "train.log_every": max(min(10, steps), 1),
        "train.checkpoint_every": _checkpoint_every(steps), "progress": True,
        **VARIANTS[variant][1]}
    if stage == 2:
        overrides["nnclr.top_k"] = budget.top_k
    if isinstance(overrides["data.stats"], (list, tuple)):
        overrides["data.stats"] = tuple(overrides["data.stats"])
    name = f"{VARIANTS[variant][0]} stage {stage}"
    return Stage(name, os.path.join(CONFIGS, f"stage{stage}.py"), overrides,
                 os.path.join(out, variant, f"stage{stage}"))


# ------------------------------------------------------------------------------------------------------ few-shot
class LogMelStats(nn.Module):
    """The log-mel baseline as an encoder for `embed_manifest`: no parameters, no network.

    x: the UNnormalised fbank [B, T, F] (the InputPolicy passes stats (0, ½), so its normalisation is the identity and
    padding frames stay exactly 0; a real frame never is: its mel channel 3 sits at log(eps)). With z = (x − μ)/(2σ)
    and the clip's own frames t ∈ V: embedding = [mean_{t∈V} z_t, std_{t∈V} z_t] ∈ R^{2F} (population std).
    Returns (z [B, T, F], embedding [B, 2F]) like the ViT's (tokens, embedding).
    """

    target_length: int
    stats: tuple[float, float]
    num_mel_bins: int = 128

    @property
    def width(self) -> int:
        return 2 * self.num_mel_bins

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean, std = self.stats
        real = jnp.any(x != 0, axis=-1, keepdims=True).astype(jnp.float32)  # [B, T, 1]
        n = jnp.maximum(jnp.sum(real, axis=1), 1.0)  # [B, 1]
        z = (x - mean) / (2.0 * std)
        mu = jnp.sum(z * real, axis=1) / n
        var = jnp.sum(jnp.square(z - mu[:, None, :]) * real, axis=1) / n
        return z, jnp.concatenate([mu, jnp.sqrt(var)], axis=-1)


IDENTITY_STATS = (0.0, 0.5)  # (x − 0) / (2 · 0.5) = x: the policy hands LogMelStats the raw fbank


def embedder(name: str, encoder_path: str | None, *, target_length: int, stats: Any, cache_dir: str,
             progress: bool) -> Embedder:
    """The few-shot driver's embedder of the log-mel baseline (encoder_path None) or a workdir's encoder."""
    if encoder_path is None:
        loaded = LoadedEncoder(LogMelStats(target_length, resolve_stats(stats)), {}, "log-mel")
        policy_stats: Any = IDENTITY_STATS
    else:
        encoder, variables = load_encoder(encoder_path, target_length=target_length)
        loaded, policy_stats = LoadedEncoder(encoder, variables, encoder_path), stats
    policy = InputPolicy(target_length=target_length, stats=policy_stats, crop="centre")  # the clip's centre T frames
    return encoder_embedder(name, loaded, policy, cache_dir=cache_dir, batch_size=64, progress=progress)


def fewshot_rows(encoders: dict[str, str | None], eval_sets: dict[str, str], *, target_length: int, stats: Any,
                 cache_dir: str, episodes: int, progress: bool) -> list[dict[str, Any]]:
    """A row per (encoder, eval set, setting): 5-way 1- and 5-shot accuracy (%) ± 95 % CI over `episodes`, every
    encoder scored on the same episodes (`score_fewshot`)."""
    rows = []
    for set_name, root in eval_sets.items():
        manifest = read_dataset("folder", root)
        embedders = [embedder(name, path, target_length=target_length, stats=stats, cache_dir=cache_dir,
                              progress=progress) for name, path in encoders.items()]
        spread: dict[str, float] = {}

        def note(e: Embedder, emb: np.ndarray, valid: np.ndarray) -> None:
            unit = emb[valid] / np.maximum(np.linalg.norm(emb[valid], axis=1, keepdims=True), 1e-12)
            spread[e.label] = float(np.linalg.norm(unit.mean(axis=0)))  # 1: every clip embeds alike; ~0: spread

        results = score_fewshot(embedders, manifest, SETTINGS, queries=QUERIES, episodes=episodes, seed=0,
                                dataset=set_name, on_embedded=note)
        for res in results:
            r = res.record
            rows.append({"encoder": res.label, "eval": set_name, "ways": r["ways"], "shots": r["shots"],
                         "accuracy_mean": r["accuracy_mean"], "ci95": r["ci95"], "queries_min": r["queries_min"],
                         "num_classes": r["num_classes"], "num_clips": r["num_clips"],
                         "mean_unit_norm": spread[res.label], "episodes_sha256": r["episodes_sha256"]})
            _say(f"{res.label:>22} on {set_name}: {r['ways']}-way {r['shots']}-shot {r['accuracy_mean']:.1f} ± "
                 f"{r['ci95']:.1f} %")
    return rows


# --------------------------------------------------------------------------------------------------------- report
def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The paper's layout: per setting, a row per encoder and a column per eval set, 'mean ± ci' in percent."""
    sets = list(dict.fromkeys(r["eval"] for r in rows))
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    out = []
    for ways, shots in dict.fromkeys((r["ways"], r["shots"]) for r in rows):
        out += [f"**{ways}-way {shots}-shot** (accuracy %, mean ± 95 % CI over the episodes)", "",
                "| encoder | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
        for e in encoders:
            cells = []
            for s in sets:
                match = [r for r in rows if (r["encoder"], r["eval"], r["ways"], r["shots"]) == (e, s, ways, shots)]
                cells.append(f"{match[0]['accuracy_mean']:.1f} ± {match[0]['ci95']:.1f}" if match else "–")
            out.append(f"| {e} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def bar_chart(rows: Sequence[dict[str, Any]], path: str) -> str:
    """Grouped bars (Fig. 5 style): a panel per setting, a group per eval set, a bar per encoder, 95 % CI whiskers."""
    from matplotlib.figure import Figure

    sets = list(dict.fromkeys(r["eval"] for r in rows))
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    settings = list(dict.fromkeys((r["ways"], r["shots"]) for r in rows))
    fig = Figure(figsize=(5.0 * len(settings), 4.2), dpi=110)
    width = 0.8 / len(encoders)
    for p, (ways, shots) in enumerate(settings):
        ax = fig.add_subplot(1, len(settings), p + 1)
        for i, e in enumerate(encoders):
            found = {r["eval"]: r for r in rows if r["encoder"] == e and (r["ways"], r["shots"]) == (ways, shots)}
            xs = [j + (i - (len(encoders) - 1) / 2) * width for j, s in enumerate(sets) if s in found]
            ax.bar(xs, [found[s]["accuracy_mean"] for s in sets if s in found], width,
                   yerr=[found[s]["ci95"] for s in sets if s in found], capsize=2, color=f"C{i % 10}", label=e)
        ax.axhline(100.0 / ways, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xticks(range(len(sets)))
        ax.set_xticklabels(sets)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{ways}-way {shots}-shot")
        ax.grid(True, axis="y", alpha=0.3)
        if p == 0:
            ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _final_metrics(workdir: str) -> dict[str, Any]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {k: v for k, v in rows[-1].items() if isinstance(v, (int, float))} if rows else {}


# ----------------------------------------------------------------------------------------------------------- main
def replicate(out: str, *, budget: "str | Budget" = "default", unlabelled: str | None = None,
              eval_sets: dict[str, str] | None = None, variants: Sequence[str] = tuple(VARIANTS),
              progress: bool = True) -> dict[str, Any]:
    """Runs the whole comparison into `out` (module docstring); returns what replicate.json holds."""
    start = time.perf_counter()
    b = BUDGETS[budget] if isinstance(budget, str) else budget
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
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

    stages: list[Stage] = [mae_stage(out, b, unlabelled)]
    timings[stages[0].name] = stages[0].run()
    mae_dir = stages[0].workdir
    mae = read_workdir_config(mae_dir)
    tuned: dict[str, str] = {}
    shared_stage1 = None
    for v in variants:
        if b.share_stage1:
            if shared_stage1 is None:
                shared_stage1 = tune_stage(out, b, unlabelled, mae, 1, "no_mix", mae_dir)
                shared_stage1.name, shared_stage1.workdir = "shared stage 1", os.path.join(out, "shared_stage1")
                stages.append(shared_stage1)
                timings[shared_stage1.name] = shared_stage1.run()
            stage1 = shared_stage1
        else:
            stage1 = tune_stage(out, b, unlabelled, mae, 1, v, mae_dir)
            stages.append(stage1)
            timings[stage1.name] = stage1.run()
        stage2 = tune_stage(out, b, unlabelled, mae, 2, v, stage1.workdir)
        stages.append(stage2)
        timings[stage2.name] = stage2.run()
        tuned[VARIANTS[v][0]] = stage2.workdir
    with open(os.path.join(out, "commands.sh"), "w", encoding="utf-8") as f:
        f.write("# the training stages of benchmarks/replicate.py, as command lines\n")
        f.writelines(s.command() + "\n" for s in stages)

    t0 = time.perf_counter()
    encoders: dict[str, str | None] = {"log-mel": None, "MAE": mae_dir, **tuned}
    t = int(mae["model"]["target_length"])
    rows = fewshot_rows(encoders, eval_sets, target_length=t, stats=mae["data"]["stats"],
                        cache_dir=os.path.join(out, "embeddings"), episodes=b.episodes, progress=progress)
    timings["few-shot"] = time.perf_counter() - t0
    result = {
        "rows": rows,
        "config": {"budget": dataclasses.asdict(b), "unlabelled": unlabelled, "eval": eval_sets,
                   "variants": {VARIANTS[v][0]: VARIANTS[v][1] for v in variants}, "queries": QUERIES,
                   "model": mae["model"], "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
                   "shared_stage1": b.share_stage1},
        "stages": {s.name: {"workdir": s.workdir, "command": s.command(), "final": _final_metrics(s.workdir)}
                   for s in stages},
        "timings": timings,
        "seconds": time.perf_counter() - start,
    }
    with open(os.path.join(out, "replicate.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=str)
    with open(os.path.join(out, "replicate.md"), "w", encoding="utf-8") as f:
        f.write(markdown_table(rows))
    bar_chart(rows, os.path.join(out, "replicate.png"))
    _say(f"done in {result['seconds'] / 60:.1f} min: {out}/replicate.{{json,md,png}}\n\n{markdown_table(rows)}")
    return result


def _named_folder(text: str) -> tuple[str, str]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"--eval wants NAME=FOLDER, got {text!r}")
    return name, folder


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (re-running reuses its finished stages)")
    parser.add_argument("--quick", action="store_true", help="the ~12-minute version (fewer steps and clips)")
    parser.add_argument("--toy", action="store_true", help=argparse.SUPPRESS)  # the test suite's size
    parser.add_argument("--unlabelled", help="a folder of audio (read recursively) to pretrain and tune on")
    parser.add_argument("--eval", action="append", type=_named_folder, default=[], metavar="NAME=FOLDER",
                        help="a labelled few-shot set in the folder layout (<class>/<clip>); repeatable")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma separated, of {list(VARIANTS)}")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--stage2-steps", type=int, default=0,
                        help="override the budget's stage-2 steps (the README's longer run: 300)")
    parser.add_argument("--stage2-lr", type=float, default=0.0,
                        help="override the budget's stage-2 peak lr (the README's longer run: 1e-3)")
    args = parser.parse_args(argv)
    budget = BUDGETS["toy" if args.toy else "quick" if args.quick else "default"]
    if args.stage2_steps or args.stage2_lr:
        budget = dataclasses.replace(budget, stage2_steps=args.stage2_steps or budget.stage2_steps,
                                     stage2_lr=args.stage2_lr or budget.stage2_lr)
    from offline_audio import MissingPackagesError

    try:
        replicate(args.out, budget=budget, unlabelled=args.unlabelled, eval_sets=dict(args.eval) or None,
                  variants=[v.strip() for v in args.variants.split(",") if v.strip()], progress=not args.no_progress)
    except MissingPackagesError as err:
        sys.exit(str(err))


if __name__ == "__main__":
    main()
