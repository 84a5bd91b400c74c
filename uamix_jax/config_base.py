"""The one base every config in `configs/` builds from, and the blocks configs add to it.

    c = base_config("tune")      # task, seed, init_from, dtype, precision, progress, model, data
    add_training(c)              # optim, train, eval (the shared trainer's fields)
    add_periodic_fewshot(c)      # fewshot with a cadence: the encoder's accuracy during training
    add_evaluation(c)            # eval: the input policy and batch of embedding / evaluation passes
    add_fewshot(c)               # fewshot: the N-way K-shot protocol

Each field means one thing in every config:
- `optim.lr` is the peak learning rate; `optim.base_lr` > 0 replaces it with AudioMAE's rule
  peak = base_lr · train.global_batch / 256 (`uamix_jax.schedules.peak_lr`, the one place it is computed).
- `optim.warmup_fraction` is the fraction of all steps spent warming up (AudioMAE's 4 warmup epochs of 60 are 1/15);
  `optim.schedule` is the shape: 'mae_ct' (warmup peak·(s+1)/(W+1), then half-cosine to min_lr) or 'audiomae'
  (warmup peak·s/W from 0, then half-cosine to min_lr).
- `data.clip_seconds` is the audio read per clip of that dataset (training: the host's random crop; evaluation: at
  most this much, centred), `data.crop` how an evaluation turns it into encoder input ('centre' window, or the mean
  over consecutive 'windows'); `eval.batch_size` is the batch of every evaluation pass.
Only declarative values live here: steps, warmup, peak rates and per-device sizes are derived at run time.
"""
from __future__ import annotations

from typing import Any

import ml_collections


def data_block(**overrides: Any) -> ml_collections.ConfigDict:
    """A dataset: its layout (`name`, `root`; `uamix_jax.data.layouts`), which clips, and how they are read."""
    d = ml_collections.ConfigDict(dict(
        name="folder",  # audioset|esc50|speechcommands|nsynth|voxceleb1|fsdkaggle2018|manifest|folder|unlabelled|tfds
        root="",
        split="",  # keep only this split ("" = every clip); AudioSet-20K = balanced_train
        tfds_name="",  # name='tfds': the prepared dataset's name, e.g. "speech_commands"
        label="",  # the dataset's name in outputs ("" = the folder's base name, or `name`)
        synthetic=False,  # with an empty root: synthesise the demo's folder set in <workdir>/data
        classes="",  # keep only these classes: "" all, "dev" / "test" a deterministic half, or "a,b,c" by name
        clip_seconds=10.0,  # audio read per clip (training: random crop / zero pad on the host)
        crop="centre",  # evaluation input: "centre" window, or "windows": mean over consecutive target_length windows
        stats="audioset",  # normalisation statistics (uamix_jax.DATASET_STATS name or (mean, std))
        worker_count=4,  # grain decoding processes per host (0: decode in the main process)
        on_bad_audio="skip",  # or "error"
        train_split="", valid_split="", test_split="",  # evaluation partitions (fine-tuning, linear probe)
    ))
    d.update(overrides)
    return d


def base_config(task: str) -> ml_collections.ConfigDict:
    """The fields every config has; `task` names the function that runs it (`uamix_jax.main.TASKS`)."""
    c = ml_collections.ConfigDict()
    c.task = task
    c.seed = 0  # parameters, data order and augmentation draws
    c.init_from = ""  # anything `load_encoder` reads (converted AudioMAE dir, .pth, training workdir); '' = random
    c.dtype = "float32"  # or "bfloat16": bf16 compute, float32 params / optimizer / BatchNorm / loss
    # jax.default_matmul_precision of the compiled work: 'default' (TPU: one bf16 pass; A100/H100: TF32 for float32;
    # CPU: float32), 'high' or 'highest' (true float32 everywhere; what the parity checks use)
    c.precision = "default"
    c.progress = True  # progress bars
    c.model = ml_collections.ConfigDict(dict(
        size="base", target_length=1024, pooling="norm_mean", posemb="prefix", remat=False, attention="auto",
        drop_path=0.0))
    c.data = data_block(name="audioset")
    return c


def add_training(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """optim, train and eval: the shared trainer's fields."""
    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-4,  # peak learning rate
        base_lr=0.0,  # > 0: peak = base_lr · train.global_batch / 256 (AudioMAE's rule) instead of `lr`
        min_lr=0.0, schedule="mae_ct", warmup_fraction=0.2,
        b1=0.9, b2=0.95, eps=1e-8,
        weight_decay=0.05,  # decoupled, on matrices only (never biases or 1-D parameters)
        head_weight_decay=1e-5,  # tuning: the NNCLR head's
        layer_decay=0.65))  # lr × layer_decay^(L − i) for block i of L where a task decays by layer
    c.train = ml_collections.ConfigDict(dict(
        epochs=40, global_batch=512, total_steps=0,  # total_steps 0: epochs × clips // global_batch
        log_every=50, checkpoint_every=500, keep_checkpoints=3))
    add_evaluation(c)
    return c


def add_periodic_fewshot(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """fewshot with a cadence: accuracy of the encoder being trained every `every` steps (> 0) and at the end, on
    the labelled set(s) fewshot.data (root: a folder, or NAME=FOLDER,NAME=FOLDER for several folder-layout sets)."""
    add_fewshot(c)
    c.fewshot.every = 0
    c.fewshot.data = data_block(clip_seconds=30.0, worker_count=0)
    return c


def add_evaluation(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """eval: the batch of evaluation passes (embeddings, logits); tasks that evaluate periodically add their cadence."""
    c.eval = ml_collections.ConfigDict(dict(batch_size=32))
    return c


def add_fewshot(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """fewshot: N-way K-shot nearest-centroid episodes (the paper's Table 2 protocol)."""
    c.fewshot = ml_collections.ConfigDict(dict(
        ways=5, shots=1, queries=15, episodes=600,
        seed=0,  # the episodes' seed
        sweep=False))  # N in {5, 10, 15, 20} x K in {1, 5} (the few-shot command's Fig. 3)
    return c


def tuning_config(stage: int) -> ml_collections.ConfigDict:
    """uaMix-MAE contrastive tuning (docs/method.md, "Progressive retraining") for ViT-B on AudioSet-20K."""
    c = base_config("tune")
    c.stage = stage
    c.data.split = "balanced_train"
    c.head = ml_collections.ConfigDict(dict(proj_hidden_dim=2048, proj_dim=256, pred_hidden_dim=4096))
    c.augment = ml_collections.ConfigDict(dict(gain_min=0.5, gain_max=1.5, freq_mask=48, time_mask=192))
    # group: samples per mix group (one λ and one box each, partner = the group reversed). A fixed size, so the
    # same config trains the same way on any hardware: 16 is stage 2's per-device batch on an 8-core TPU (global
    # 128), so the paper-scale recipe mixes as a DDP implementation on 8 accelerators would; it divides every
    # per-device batch that is a multiple of 16. 0 = the per-device batch (what PyTorch DDP code does; then the
    # training depends on the device count).
    c.mix = ml_collections.ConfigDict(
        dict(method="t_cutmix", alpha=1.0, width="sqrt", group=16, label_smoothing=0.0))
    c.nnclr = ml_collections.ConfigDict(dict(temperature=0.15, top_k=1, queue_size=65536, ema_momentum=0.0))
    add_training(c)
    add_periodic_fewshot(c)
    return c


def apply_tuning_demo(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The laptop demo: a tiny ViT on a synthesised dataset; whole demo (both stages) in minutes on 2 CPU cores."""
    c.task = "demo"
    c.model.update(size="test", target_length=128)
    c.head.update(proj_hidden_dim=128, proj_dim=32, pred_hidden_dim=128)
    c.data.update(name="folder", root="", split="", clip_seconds=2.0, worker_count=0)
    c.augment.time_mask = 192  # scaled with T: 24 frames at T = 128
    c.nnclr.queue_size = 1024
    # a randomly initialised tiny ViT learns from scratch: the paper's 1e-4 (for a pretrained ViT-B) barely moves it
    c.optim.lr = 3e-3
    c.mix.group = 4  # divides the per-device batch (32 / n) on 1, 2, 4 and 8 devices: the same demo on each
    c.train.update(global_batch=32, log_every=10, checkpoint_every=50)
    c.fewshot.update(ways=5, shots=1, queries=5, episodes=200)
    return c
