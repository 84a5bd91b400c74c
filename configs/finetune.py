"""Fine-tuning as in the paper's Table 4 (AudioMAE's recipe, docs/method.md "Fine-tuning"), one preset per dataset.

    python -m uamix_jax.main --config=configs/finetune.py:audioset20k --workdir=W --config.init_from=ENC \
        --config.data.root=/data/audioset
    python -m uamix_jax.main --config=configs/finetune.py:esc50 --workdir=W --config.init_from=ENC \
        --config.data.root=/data/ESC-50-master            # 5-fold CV (config.folds='all'); '--config.folds=1': one
    python -m uamix_jax.main --config=configs/finetune.py:speechcommands --workdir=W --config.init_from=ENC \
        --config.data.root=/data/speech_commands_v0.02
    python -m uamix_jax.main --config=configs/finetune.py:voxceleb1 --workdir=W --config.init_from=ENC \
        --config.data.root=/data/voxceleb1
    python -m uamix_jax.main --config=configs/finetune.py:demo --workdir=/tmp/ft_demo   # synthetic data, tiny ViT

ENC: anything `load_encoder` reads (converted AudioMAE directory, AudioMAE .pth, a stage-1/2, pretraining or
fine-tuning workdir); '' fine-tunes a random init. Every preset takes --config.data.name / --config.data.root (then
no data is synthesised; a folder layout without splits gets a seeded stratified 80/20 train/test split). Output:
W/finetune/<dataset>.json (value = last evaluation, best, best_epoch; folds: per_fold, std), W/metrics.jsonl,
W/tensorboard/. The peak lr is optim.base_lr · global_batch / 256, as AudioMAE computes it.

Presets. AudioMAE publishes runnable values only for AudioSet-20K; the others are this project's choices, from its
recipe, its ESC-50 script's defaults and its paper's fine-tuning table (single-label sets: cross-entropy with label
smoothing 0.1 and no mixup; SpecAugment 48 frequency bins / 192 frames at T = 1024, scaled with T; 2-D token masking
0.2 / 0.2 everywhere):
- audioset20k (= the default): AudioMAE's `ft_as.sh` exactly: T = 1024, AudioSet stats, batch 32, base_lr 1e-3
  (lr 1.25e-4), 60 epochs, 4 warmup, weight decay 5e-4 (the code's value), drop path 0.1, masking 0.2 / 0.2, random
  gain (roll_mag_aug), waveform mixup 0.5 with λ ~ Beta(10, 10), BCE; train balanced_train, test eval; mAP.
- esc50: T = 512, ESC-50 stats, batch 64, base_lr 5e-4 (lr 1.25e-4), 60 epochs, 4 warmup, weight decay 5e-4, random
  gain, time mask 96 frames; CE + label smoothing 0.1, no mixup (AudioMAE's ESC script: mixup 0, smoothing 0.1);
  5-fold cross-validation, top-1 accuracy, mean and std over the folds.
- speechcommands: T = 128 (1 s clips), SpeechCommands stats, batch 256, base_lr 1e-3 (lr 1e-3), 60 epochs (AudioMAE:
  like AS-20K), 4 warmup, time mask 24 frames, masking keeps 6 × 6 of the 8 × 8 grid; CE + LS 0.1 (AudioMAE itself
  marks SPC multi-label with BCE); best chosen on valid, reported on test.
- voxceleb1: T = 1024 with AudioSet stats; training on random 1024-frame crops (data.clip_seconds = 10.255 s, the
  pipeline's random crop), testing on the mean logits over consecutive 1024-frame windows of up to 60 s per clip
  (data.crop='windows'); batch 64, base_lr 5e-4, 60 epochs, 4 warmup; CE + LS 0.1, no mixup; identification split
  (iden_split.txt): train / valid / test, best chosen on valid, reported on test.
- demo: the 'test' ViT (4 blocks, width 32) at T = 128 on the demo's synthetic 8-class folder set (made in
  W/data when data.root is empty), 2 s clips, 80/20 split, batch 32, base_lr 0.08 (lr 0.01: a random init learns
  from scratch), 25 epochs with 2 of warmup; seconds to a minute on a laptop CPU.

TPU memory per chip (audioset20k, ViT-B, T = 1024, --config.dtype=bfloat16; compiled by XLA:TPU with
tools/plan_tpu.py, table in benchmarks/README.md): the batch of 32 takes 7.4 GiB on one v5e or v6e chip (Colab's
TPUs) and under 3 GiB per chip on a v4-8, v5e-8, v5p-8 or v6e-8. The largest batch per chip (multiples of 4) in
bfloat16: v5e 80, v6e 180, v4 208, v5p 648; in float32 (the default): v5e 64, v6e 148, v4 108, v5p 348.
python tools/plan_tpu.py --config=configs/finetune.py:audioset20k --topology=v5e-8 --max-batch
"""
import ml_collections

from uamix_jax.config_base import add_training, base_config

PRESETS = ("audioset20k", "esc50", "speechcommands", "voxceleb1", "demo")
WINDOW_SECONDS = 10.255  # (1024 − 1) · 10 ms + 25 ms: exactly 1024 fbank frames


def base() -> ml_collections.ConfigDict:
    """AudioMAE's AS-20K recipe; the presets change what their dataset changes."""
    c = base_config("finetune")
    c.folds = ""  # 'all' or '1,2': cross-validation over the dataset's folds (ESC-50), one sub-workdir per fold
    c.model.update(pooling="fc_norm", posemb="audiomae", drop_path=0.1)
    c.data.update(name="audioset", train_split="balanced_train",  # '' = every clip outside the test/valid splits
                  valid_split="",  # with one, `best` is chosen on it and reported on test
                  test_split="eval")  # a dataset without it (folder layout) gets a seeded stratified 80/20 split
    c.augment = ml_collections.ConfigDict(dict(
        gain_min=0.5, gain_max=1.5, gain_beta=10.0,  # AudioMAE's roll_mag_aug: 0.5 + Beta(10, 10); gain_max 0: off
        freq_mask=48, time_mask=192,  # SpecAugment; time_mask at T = 1024, scaled with T
        mask_t_prob=0.2, mask_f_prob=0.2))  # 2-D token masking (fraction of time rows / frequency columns dropped)
    c.finetune = ml_collections.ConfigDict(dict(
        multilabel=True,  # BCE on multi-hot targets, mAP; False: CE with label smoothing, top-1 accuracy
        label_smoothing=0.1, mixup_prob=0.5, mixup_alpha=10.0,
        mix_group=4))  # mixup partners come from groups of this many consecutive samples (0: the per-device batch)
    add_training(c)
    c.optim.update(base_lr=1e-3, min_lr=1e-6, schedule="audiomae", warmup_fraction=4 / 60, b2=0.999,
                   weight_decay=5e-4, layer_decay=0.75)
    c.train.update(epochs=60, global_batch=32, checkpoint_every=1000, keep_checkpoints=2)
    c.eval.update(
        every_epochs=1.0, every_steps=0,  # evaluation cadence; every_steps > 0 overrides every_epochs
        clip_seconds=10.0)  # audio read per test clip (data.crop 'windows': mean logits over T-frame windows)
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "audioset20k"
    if preset not in PRESETS:
        raise ValueError(f"configs/finetune.py: unknown preset {arg!r}; choose one of {PRESETS}")
    c = base()
    if preset == "esc50":
        c.folds = "all"
        c.model.target_length = 512
        c.data.update(name="esc50", train_split="", test_split="", clip_seconds=5.0, stats="esc50")
        c.finetune.update(multilabel=False, mixup_prob=0.0)
        c.optim.base_lr = 5e-4
        c.train.global_batch = 64
        c.eval.clip_seconds = 5.0
    elif preset == "speechcommands":
        c.model.target_length = 128
        c.data.update(name="speechcommands", train_split="train", valid_split="valid", test_split="test",
                      clip_seconds=1.0, stats="speechcommands")
        c.finetune.update(multilabel=False, mixup_prob=0.0)
        c.train.global_batch = 256
        c.eval.update(batch_size=256, clip_seconds=1.0)
    elif preset == "voxceleb1":
        c.data.update(name="voxceleb1", train_split="train", valid_split="valid", test_split="test",
                      clip_seconds=WINDOW_SECONDS)
        c.finetune.update(multilabel=False, mixup_prob=0.0)
        c.optim.base_lr = 5e-4
        c.train.global_batch = 64
        c.data.crop = "windows"
        c.eval.update(clip_seconds=60.0, batch_size=8)
    elif preset == "demo":
        c.model.update(size="test", target_length=128)
        c.data.update(name="folder", train_split="", test_split="", clip_seconds=2.0, worker_count=0,
                      synthetic=True, label="demo")
        c.finetune.update(multilabel=False, mixup_prob=0.0)
        c.optim.update(base_lr=0.08, warmup_fraction=2 / 25)
        c.train.update(epochs=25, global_batch=32, log_every=5, checkpoint_every=50)
        c.eval.update(batch_size=32, clip_seconds=2.0)
    return c
