"""uaMix-MAE stage 1: train the NNCLR head on a frozen AudioMAE encoder (SPEC.md "Progressive retraining").

    python tools/convert_audiomae.py --input pretrained.pth --output ckpt/audiomae
    python -m uamix_jax.main --config=configs/stage1.py --workdir=W1 \
        --config.init_from=ckpt/audiomae --config.data.root=/data/audioset

Laptop demo (synthesised data, tiny ViT): python -m uamix_jax.main --config=configs/stage1.py:demo --workdir=/tmp/d1
"""
from uamix_jax.train.config_base import apply_demo, base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.stage = 1
    c.train.epochs = 40
    c.train.global_batch = 512
    c.nnclr.update(temperature=0.15, top_k=1, ema_momentum=0.0)  # the paper's τ and k; no EMA projector
    if arg == "demo":
        apply_demo(c)
        c.train.epochs = 40
    elif arg:
        raise ValueError(f"configs/stage1.py: unknown variant {arg!r} (use ':demo' or nothing)")
    return c
