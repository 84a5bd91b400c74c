"""The tiny configuration the test-suite shares (a 4-block, 32-wide ViT on 1.28 s inputs; seconds per step on CPU).

    python -m uamix_jax.main --config=configs/test.py:stage2 --workdir=/tmp/t --config.data.root=DIR
"""
from uamix_jax.config_base import apply_tuning_demo, tuning_config


def get_config(arg: str | None = "stage1"):
    if arg not in ("stage1", "stage2", None):
        raise ValueError(f"configs/test.py: variant must be 'stage1' or 'stage2', got {arg!r}")
    c = apply_tuning_demo(tuning_config(stage=2 if arg == "stage2" else 1))
    c.task = "tune"
    c.progress = False
    c.data.clip_seconds = 1.5
    c.mix.group = 2  # divides the per-device batch of the global 16 on 1, 2, 4 and 8 devices: same step on each
    c.nnclr.update(queue_size=64, top_k=2 if c.stage == 2 else 1, ema_momentum=0.99 if c.stage == 2 else 0.0)
    c.train.update(global_batch=16, total_steps=6, log_every=1, checkpoint_every=2)
    c.fewshot.update(ways=3, shots=1, queries=2, episodes=20)
    return c
