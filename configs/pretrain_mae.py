"""AudioMAE's masked-autoencoder pretraining (uamix_jax/train/pretrain.py) on a folder of unlabelled audio.

    python -m uamix_jax.main --config=configs/pretrain_mae.py --workdir=W0 --config.data.root=/data/my_audio

The workdir then starts uaMix-MAE tuning (`configs/stage1.py --config.init_from=W0`), few-shot evaluation
(`configs/fewshot.py --config.init_from=W0`) or `tools/export_audiomae.py` (AudioMAE's key names, plain decoder).
Default: AudioMAE's ViT-B recipe (docs/method.md, "MAE pretraining": mask ratio 0.8, norm_pix_loss, AdamW
β = (0.9, 0.95), wd 1e-4, global batch 512, lr = 2e-4 · 512 / 256, 33 epochs with 3 of warmup) with the plain decoder
of `mae_vit_base_patch16` (512 wide, 8 blocks, 16 heads).

Variants:
    :demo   a tiny ViT on synthetic tones made in W0/data (no data needed), minutes on 2 CPU cores:
            python -m uamix_jax.main --config=configs/pretrain_mae.py:demo --workdir=/tmp/mae_demo
    :cpu    a small ViT for a 2-core CPU ('mini': ViT-Ti width, 4 blocks; T = 256 frames = 2.56 s, a 2-block
            decoder); set data.root
    :test   the test-suite's size (seconds per step)

TPU memory per chip (ViT-B, T = 1024, --config.dtype=bfloat16; compiled by XLA:TPU with tools/plan_tpu.py, table in
benchmarks/README.md): AudioMAE's global batch of 512 fits a v6e-8 (25.4 GiB per chip) and a v5p-8 (45.8 GiB), not a
v5e-8 or v4-8. The largest batch per chip (multiples of 8) in bfloat16: v5e 40 (14.5 of its 15.75 GiB), v6e 72, v4
72, v5p 248; in float32 (the default): v5e 40, v6e 80, v4 72, v5p 288 (float32 fits as many clips or more here: the
decoder's attention weights, the largest activations, are kept for the backward pass in float32 in both, and bfloat16
keeps a bfloat16 copy besides). A v5e-8 takes at most 320 clips a step and a v4-8 288 in either
(--config.train.global_batch=256; the lr follows batch / 256). For another slice or setting:
python tools/plan_tpu.py --config=configs/pretrain_mae.py --topology=v5e-8 --max-batch
"""
import ml_collections

from uamix_jax.config_base import add_periodic_fewshot, add_training, base_config


def get_config(arg: str | None = None):
    c = base_config("pretrain")
    # the encoder; `pooling` stays 'norm_mean' (AudioMAE's pretraining model ends with `norm`)
    c.data.update(name="unlabelled", split="")  # every audio file below data.root
    # AudioMAE's plain decoder (decoder_mode=0) of mae_vit_base_patch16
    c.decoder = ml_collections.ConfigDict(dict(width=512, depth=8, num_heads=16, mlp_dim=2048))
    c.mae = ml_collections.ConfigDict(dict(mask_ratio=0.8, norm_pix_loss=True))
    # AudioMAE pretrains with roll_mag_aug, which only scales the waveform, by 0.5 + Beta(10, 10) (its `roll` is off):
    # gain = gain_min + (gain_max − gain_min) · Beta(gain_beta, gain_beta); gain_beta 0 = uniform, gain_max 0 = off
    c.augment = ml_collections.ConfigDict(dict(gain_min=0.5, gain_max=1.5, gain_beta=10.0))
    add_training(c)
    add_periodic_fewshot(c)
    c.optim.update(base_lr=2e-4, weight_decay=1e-4, warmup_fraction=3 / 33)  # peak 4e-4 at batch 512
    c.train.update(epochs=33, global_batch=512, checkpoint_every=1000)

    if arg in ("demo", "test"):
        c.model.update(size="test", target_length=128)
        c.decoder.update(width=32, depth=2, num_heads=2, mlp_dim=64)
        c.data.update(root="", clip_seconds=2.0, worker_count=0, synthetic=True)
        c.optim.update(base_lr=0.0, lr=2e-3, warmup_fraction=0.1)  # a small model from scratch: a larger peak rate
        c.train.update(epochs=20, global_batch=32, log_every=10, checkpoint_every=100)
        if arg == "test":
            c.progress = False
            c.data.update(clip_seconds=1.5, synthetic=False)
            c.train.update(global_batch=16, total_steps=6, log_every=1, checkpoint_every=3)
    elif arg == "cpu":
        c.model.update(size="mini", target_length=256)
        c.decoder.update(width=128, depth=2, num_heads=4, mlp_dim=512)
        c.data.update(clip_seconds=3.0, worker_count=2)
        c.optim.update(base_lr=0.0, lr=1.5e-3, warmup_fraction=0.05)
        c.train.update(epochs=100, global_batch=64, log_every=20, checkpoint_every=200)
    elif arg not in (None, ""):
        raise ValueError(f"configs/pretrain_mae.py: variant must be '', 'demo', 'cpu' or 'test', got {arg!r}")
    return c

