"""The fields every training config has (SPEC.md's recipe for ViT-B on AudioSet-20K) and the laptop demo variant.

Config files in `configs/` start from `base_config()` and change what their stage changes. Only declarative values
live here: steps, warmup and per-device sizes are derived at run time (`uamix_jax.train.loop`).
"""
from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "tune"  # uamix_jax.main.TASKS: "tune" runs config.stage; the ":demo" variants set "demo"
    c.stage = 1
    c.seed = 0
    c.init_from = ""  # converted AudioMAE dir or .pth, or a training workdir (stage 2: stage 1's workdir)
    c.dtype = "float32"  # or "bfloat16": bf16 compute, float32 params / optimizer / BatchNorm / loss
    # jax.default_matmul_precision for the step: 'default' (TPU: one bf16 pass; A100/H100: TF32 for float32;
    # CPU: float32), 'high' or 'highest' (true float32 everywhere; what the parity checks use)
    c.precision = "default"

    c.model = ml_collections.ConfigDict(
        dict(size="base", target_length=1024, pooling="norm_mean", posemb="prefix", remat=False, attention="auto"))
    c.head = ml_collections.ConfigDict(dict(proj_hidden_dim=2048, proj_dim=256, pred_hidden_dim=4096))

    c.data = ml_collections.ConfigDict()
    c.data.name = "audioset"  # audioset|esc50|speechcommands|nsynth|voxceleb1|fsdkaggle2018|manifest|folder|unlabelled|tfds
    c.data.root = ""
    c.data.split = "balanced_train"  # keep only this split ("" = every clip); AudioSet-20K = balanced_train
    c.data.tfds_name = ""  # data.name='tfds': the prepared dataset's name, e.g. "speech_commands"
    c.data.clip_seconds = 10.0  # host crop/pad length; views then crop model.target_length frames
    c.data.stats = "audioset"  # normalisation statistics (uamix_jax.DATASET_STATS)
    c.data.worker_count = 4  # grain decoding processes per host (0: decode in the main process)
    c.data.on_bad_audio = "skip"  # or "error"

    c.augment = ml_collections.ConfigDict(dict(gain_min=0.5, gain_max=1.5, freq_mask=48, time_mask=192))
    # group: samples per mix group (one λ and one box each, partner = the group reversed). A fixed size, so the
    # same config trains the same way on any hardware: 16 is stage 2's per-device batch on an 8-core TPU (global
    # 128), so the paper-scale recipe mixes as a DDP implementation on 8 accelerators would; it divides every
    # per-device batch that is a multiple of 16. 0 = the per-device batch (what PyTorch DDP code does; then the
    # training depends on the device count).
    c.mix = ml_collections.ConfigDict(
        dict(method="t_cutmix", alpha=1.0, width="sqrt", group=16, label_smoothing=0.0))
    c.nnclr = ml_collections.ConfigDict(dict(temperature=0.15, top_k=1, queue_size=65536, ema_momentum=0.0))
    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-4, b1=0.9, b2=0.95, eps=1e-8, head_weight_decay=1e-5, encoder_weight_decay=0.05, layer_decay=0.65,
        warmup_fraction=0.2))
    c.train = ml_collections.ConfigDict(dict(
        epochs=40, global_batch=512, total_steps=0,  # total_steps 0: epochs × clips // global_batch
        log_every=50, checkpoint_every=500, keep_checkpoints=3, progress=True))
    # N-way K-shot evaluation of the encoder: every `every` steps and at the end when every > 0 (on the labelled
    # set fewshot.data: name, root, split, label), and after the demo (on its held-out clips)
    c.fewshot = ml_collections.ConfigDict(dict(ways=5, shots=1, queries=15, episodes=600, seed=0, every=0,
                                               batch_size=32, worker_count=0))
    c.fewshot.data = ml_collections.ConfigDict(dict(name="folder", root="", split="", label="", stats="audioset",
                                                    tfds_name="", clip_seconds=30.0, crop="centre"))
    return c


def apply_demo(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The laptop demo: a tiny ViT on a synthesised dataset; whole demo (both stages) in minutes on 2 CPU cores."""
    c.task = "demo"
    c.model.size = "test"
    c.model.target_length = 128
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
