"""uaMix-MAE stage 1: train the NNCLR head on a frozen AudioMAE encoder (docs/method.md, "Progressive retraining").

    python tools/convert_audiomae.py --input pretrained.pth --output ckpt/audiomae
    python -m uamix_jax.main --config=configs/stage1.py --workdir=W1 \
        --config.init_from=ckpt/audiomae --config.data.root=/data/audioset

Laptop demo (synthesised data, tiny ViT): python -m uamix_jax.main --config=configs/stage1.py:demo --workdir=/tmp/d1
"""
from uamix_jax.config_base import apply_tuning_demo, tuning_config


def get_config(arg: str | None = None):
    c = tuning_config(stage=1)
    c.train.update(epochs=40, global_batch=512)
    c.nnclr.update(temperature=0.15, top_k=1, ema_momentum=0.0)  # the paper's τ and k; no EMA projector
    if arg == "demo":
        apply_tuning_demo(c)
        c.train.epochs = 40
    elif arg:
        raise ValueError(f"configs/stage1.py: unknown variant {arg!r} (use ':demo' or nothing)")
    return c
