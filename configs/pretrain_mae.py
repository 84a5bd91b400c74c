"""AudioMAE's masked-autoencoder pretraining (uamix_jax/train/pretrain.py) on a folder of unlabelled audio.

    python -m uamix_jax.main --config=configs/pretrain_mae.py --workdir=W0 --config.data.root=/data/my_audio

The workdir then starts uaMix-MAE tuning (`configs/stage1.py --config.init_from=W0`), few-shot evaluation
(`configs/fewshot.py --config.init_from=W0`) or `tools/export_audiomae.py` (AudioMAE's key names, plain decoder).
Default: AudioMAE's ViT-B recipe (reference/audiomae.md "Pretraining": mask ratio 0.8, norm_pix_loss, AdamW
β = (0.9, 0.95), wd 1e-4, global batch 512, lr = 2e-4 · 512 / 256, 33 epochs with 3 of warmup) with the plain decoder
of `mae_vit_base_patch16` (512 wide, 8 blocks, 16 heads).

Variants:
    :demo   a tiny ViT on synthetic tones made in W0/data (no data needed), minutes on 2 CPU cores:
            python -m uamix_jax.main --config=configs/pretrain_mae.py:demo --workdir=/tmp/mae_demo
    :cpu    a small ViT for a 2-core CPU ('mini': ViT-Ti width, 4 blocks; T = 256 frames = 2.56 s, a 2-block
            decoder); set data.root
    :test   the test-suite's size (seconds per step)
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "pretrain"
    c.seed = 0
    c.dtype = "float32"  # or "bfloat16": bf16 compute, float32 params / optimizer / loss
    c.precision = "default"  # jax.default_matmul_precision: 'default' | 'high' | 'highest'

    # the encoder; `pooling` stays 'norm_mean' (AudioMAE's pretraining model ends with `norm`)
    c.model = ml_collections.ConfigDict(
        dict(size="base", target_length=1024, pooling="norm_mean", posemb="prefix", remat=False, attention="auto"))
    # AudioMAE's plain decoder (decoder_mode=0) of mae_vit_base_patch16
    c.decoder = ml_collections.ConfigDict(dict(width=512, depth=8, num_heads=16, mlp_dim=2048))
    c.mae = ml_collections.ConfigDict(dict(mask_ratio=0.8, norm_pix_loss=True))
    # AudioMAE pretrains with roll_mag_aug, which is a gain in (0.5, 1.5) only (reference §4); gain_max 0 = off
    c.augment = ml_collections.ConfigDict(dict(gain_min=0.5, gain_max=1.5))

    c.data = ml_collections.ConfigDict()
    c.data.name = "unlabelled"  # every audio file below data.root; or any layout of uamix_jax.data.layouts
    c.data.root = ""
    c.data.split = ""  # keep only this split ("" = every clip)
    c.data.tfds_name = ""
    c.data.clip_seconds = 10.0  # host crop/pad length; the step crops model.target_length frames at random
    c.data.stats = "audioset"  # normalisation statistics (a DATASET_STATS name or (mean, std))
    c.data.worker_count = 4
    c.data.on_bad_audio = "skip"
    c.data.synthetic = False  # True with an empty root: synthesise the demo's clips into <workdir>/data

    c.optim = ml_collections.ConfigDict(dict(
        lr=4e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=1e-4, warmup_fraction=3 / 33))
    c.train = ml_collections.ConfigDict(dict(
        epochs=33, global_batch=512, total_steps=0,  # total_steps 0: epochs × clips // global_batch
        log_every=50, checkpoint_every=1000, keep_checkpoints=3, progress=True))

    if arg in ("demo", "test"):
        c.model.update(size="test", target_length=128)
        c.decoder.update(width=32, depth=2, num_heads=2, mlp_dim=64)
        c.data.update(root="", clip_seconds=2.0, worker_count=0, synthetic=True)
        c.optim.update(lr=2e-3, warmup_fraction=0.1)  # a small model from scratch: a larger peak rate
        c.train.update(epochs=20, global_batch=32, log_every=10, checkpoint_every=100)
        if arg == "test":
            c.data.update(clip_seconds=1.5, synthetic=False)
            c.train.update(global_batch=16, total_steps=6, log_every=1, checkpoint_every=3, progress=False)
    elif arg == "cpu":
        c.model.update(size="mini", target_length=256)
        c.decoder.update(width=128, depth=2, num_heads=4, mlp_dim=512)
        c.data.update(clip_seconds=3.0, worker_count=2)
        c.optim.update(lr=1.5e-3, warmup_fraction=0.05)
        c.train.update(epochs=100, global_batch=64, log_every=20, checkpoint_every=200)
    elif arg not in (None, ""):
        raise ValueError(f"configs/pretrain_mae.py: variant must be '', 'demo', 'cpu' or 'test', got {arg!r}")
    return c
