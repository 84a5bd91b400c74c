"""uaMix-MAE stage 1: train the NNCLR head on a frozen AudioMAE encoder (docs/method.md, "Progressive retraining").

    python tools/convert_audiomae.py --input pretrained.pth --output ckpt/audiomae
    python -m uamix_jax.main --config=configs/stage1.py --workdir=W1 \
        --config.init_from=ckpt/audiomae --config.data.root=/data/audioset

Laptop demo (synthesised data, tiny ViT): python -m uamix_jax.main --config=configs/stage1.py:demo --workdir=/tmp/d1

TPU memory per chip (ViT-B, T = 1024, --config.dtype=bfloat16; compiled by XLA:TPU with tools/plan_tpu.py, table in
benchmarks/README.md): the global batch of 512 takes 3.9 GiB per chip on a v5e-8, 3.3 on a v6e-8, 10.4 on a v4-8,
10.5 on a v5p-8 and 23.3 GiB on a single v6e chip; a single v5e chip does not hold it (the compiler asks 46 GiB of
temporaries). The largest batch per chip (a multiple of 16 that divides the 65,536-row queue) in bfloat16: v5e 128
(10.5 of its 15.75 GiB), v6e 512, v4 256, v5p 1024; in float32 (the default): v5e 128, v6e 512, v4 128, v5p 512.
For another slice or setting:
python tools/plan_tpu.py --config=configs/stage1.py --topology=v5e-8 --max-batch
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
