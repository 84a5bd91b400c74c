"""uaMix-MAE stage 2: contrastive tuning of blocks L/2..L-1, the final norm and the head (docs/method.md).

    python -m uamix_jax.main --config=configs/stage2.py --workdir=W2 \
        --config.init_from=W1 --config.data.root=/data/audioset

Laptop demo, stage 1 then stage 2 then few-shot on classes the tuning never sees, with a tiny ViT:
    python -m uamix_jax.main --config=configs/stage2.py:demo --workdir=/tmp/uamix_demo

TPU memory per chip (ViT-B, T = 1024, --config.dtype=bfloat16; compiled by XLA:TPU with tools/plan_tpu.py, table in
benchmarks/README.md): the global batch of 128 takes 7.6 GiB on a v5e-8 and 8.0 GiB on a v6e-8 (16 clips per chip),
16.0 GiB on a v4-8 or v5p-8 (32 per chip); the largest batch per chip in bfloat16: v5e 32 (14.7 of its 15.75 GiB),
v6e 64, v4 32, v5p 128; in float32 (the default), the same: v5e 32, v6e 64, v4 32, v5p 128. A single v5e or v6e
chip (Colab's TPUs) does not hold 128 clips (the compiler asks 43 / 37 GiB of temporaries): use 32 / 64 there. For
another slice or setting: python tools/plan_tpu.py --config=configs/stage2.py --topology=v5e-8 --max-batch
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
