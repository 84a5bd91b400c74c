"""uaMix-MAE stage 2: contrastive tuning of blocks L/2..L-1, the final norm and the head (docs/method.md).

    python -m uamix_jax.main --config=configs/stage2.py --workdir=W2 \
        --config.init_from=W1 --config.data.root=/data/audioset

Laptop demo, stage 1 then stage 2 then few-shot on classes the tuning never sees, with a tiny ViT:
    python -m uamix_jax.main --config=configs/stage2.py:demo --workdir=/tmp/uamix_demo
"""
from uamix_jax.config_base import apply_tuning_demo, tuning_config


def get_config(arg: str | None = None):
    c = tuning_config(stage=2)
    c.train.update(epochs=160, global_batch=128)
    # MAE-CT's contrastive-tuning values, which the paper adopts for its "other hyperparameters"
    c.nnclr.update(temperature=0.15, top_k=20, ema_momentum=0.99)
    if arg == "demo":
        apply_tuning_demo(c)
        c.train.epochs = 80
    elif arg:
        raise ValueError(f"configs/stage2.py: unknown variant {arg!r} (use ':demo' or nothing)")
    return c
