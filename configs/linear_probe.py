"""Linear probing of a frozen encoder (the cheap variant of the paper's Table 4), one preset per dataset.

    python -m uamix_jax.main --config=configs/linear_probe.py --workdir=W --config.init_from=ENC \
        --config.data.name=folder --config.data.root=DIR      # no preset: AudioSet's 1024 frames and statistics
    python -m uamix_jax.main --config=configs/linear_probe.py:esc50 --workdir=W --config.init_from=ENC \
        --config.data.root=/data/ESC-50-master                # 5-fold CV; --config.folds=1 for one fold
    python -m uamix_jax.main --config=configs/linear_probe.py:demo --workdir=/tmp/lp_demo

ENC: an encoder spec as the few-shot command takes it (configs/fewshot.py), optionally NAME=ENC (NAME goes into the
record as `label`): PATH (anything `load_encoder` reads; '' probes a random init of model.size),
hear:MODULE[@MODEL_FILE] (any installed HEAR 2021 module's scene embeddings of each clip's centre of at most
data.clip_seconds, at the module's sample rate) or npz:FILE (precomputed embeddings: clip_ids [M] as
Manifest.clip_ids gives them, embeddings [M, D]). The encoder stays frozen: its clip embeddings (a checkpoint's own
pooling) are computed once and cached in W/embeddings/ (reused while encoder and inputs are unchanged, as by the
few-shot command), then a BatchNorm without affine + linear layer is trained on them with AdamW (MAE's linear probe
uses LARS, made for batch 16,384; see `uamix_jax.evaluation.linear_probe.train_probe`). The train/test partitions
depend on the dataset and config.seed only: every encoder is probed on the same ones (less clips it cannot read).
Output: W/linear_probe/<dataset>.json (value = last epoch, best, best_epoch; folds: per_fold, std; label, encoder,
embeddings), one per dataset: probe each encoder in its own W to keep every record.

Presets give each dataset fine-tuning's input policy (configs/finetune.py: T, statistics, splits, metric) with the
positional table of frozen use ('prefix', docs/method.md): audioset20k (T = 1024, AudioSet stats, balanced_train →
eval, mAP), esc50 (T = 512, ESC-50 stats, 5 folds), speechcommands (T = 128, SpeechCommands stats, train → test),
voxceleb1 (T = 1024 windows of up to 60 s, mean embedding, AudioSet stats), demo (the 'test' ViT on the synthetic
folder set in W/data, T = 128, 80/20 split). Probe: MAE's 90 epochs with 10 of warmup, AdamW at base_lr 1e-3
(peak = base_lr · batch / 256), batch 256 (MAE: 16,384, for ImageNet's 1.28M images; these sets have 2k-85k clips).
"""
import ml_collections

from uamix_jax.config_base import add_training, base_config

PRESETS = ("audioset20k", "esc50", "speechcommands", "voxceleb1", "demo")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg and arg not in PRESETS:
        raise ValueError(f"configs/linear_probe.py: unknown preset {arg!r}; choose one of {PRESETS} or none")
    c = base_config("linear_probe")
    c.folds = ""  # 'all' or '1,2': cross-validation over the dataset's folds
    c.data.update(name="folder", train_split="",  # '' = every clip outside the test split
                  test_split="test",  # absent from the dataset: a seeded stratified 80/20 split
                  clip_seconds=10.0, worker_count=2)
    c.probe = ml_collections.ConfigDict(dict(multilabel=False))  # BCE + mAP on multi-hot targets; else CE + top-1
    add_training(c)  # the probe's optimizer and batches; eval.batch_size is the embedding batch
    c.optim.update(base_lr=1e-3, schedule="audiomae", warmup_fraction=10 / 90, b2=0.999, weight_decay=0.0)
    c.train.update(epochs=90, global_batch=256)

    if arg == "audioset20k":
        c.probe.multilabel = True
        c.data.update(name="audioset", train_split="balanced_train", test_split="eval")
    elif arg == "esc50":
        c.folds = "all"
        c.model.target_length = 512
        c.data.update(name="esc50", test_split="", stats="esc50", clip_seconds=5.0)
    elif arg == "speechcommands":
        c.model.target_length = 128
        c.data.update(name="speechcommands", train_split="train", test_split="test", stats="speechcommands",
                      clip_seconds=1.0)
    elif arg == "voxceleb1":
        c.data.update(name="voxceleb1", train_split="train", test_split="test", crop="windows", clip_seconds=60.0)
        c.eval.batch_size = 8
    elif arg == "demo":
        c.model.update(size="test", target_length=128)
        c.data.update(synthetic=True, test_split="", label="demo", clip_seconds=2.0, worker_count=0)
        c.optim.update(base_lr=0.08, warmup_fraction=3 / 30)
        c.train.update(epochs=30, global_batch=32)
    return c
