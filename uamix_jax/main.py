"""Command line: parse flags, then train (stage 1 / 2), run the demo, or evaluate. Nothing else.

    python -m uamix_jax.main --config=configs/stage1.py --workdir=W1 --config.init_from=ckpt/audiomae
    python -m uamix_jax.main --config=configs/stage2.py --workdir=W2 --config.init_from=W1
    python -m uamix_jax.main --config=configs/stage2.py:demo --workdir=/tmp/uamix_demo
"""
from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs (resumes when it has some).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host TPU/GPU runs).")
config_flags.DEFINE_config_file("config", None, "A config file, e.g. configs/stage1.py or configs/stage2.py:demo.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
    """Drops INFO chatter of orbax, grain and jax's internals (one line per checkpoint write) from the absl log."""

    NOISY = ("/orbax/", "/grain/", "/jax/_src/")

    def filter(self, record) -> bool:  # logging.Filter protocol
        return record.levelno > 20 or not any(part in record.pathname for part in self.NOISY)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    logging.get_absl_handler().addFilter(_QuietLibraries())
    if FLAGS.distributed:
        jax.distributed.initialize()
    logging.info("JAX %s: process %d of %d, %d local / %d global devices (%s)", jax.__version__,
                 jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.devices()[0].platform)
    config = FLAGS.config
    workdir = os.path.abspath(FLAGS.workdir)
    if "mode" in config and config.mode == "fewshot":
        from uamix_jax.evaluation.fewshot_main import run_fewshot

        run_fewshot(config, workdir)
    elif config.demo:
        from uamix_jax.train.demo import run_demo

        run_demo(config, workdir)
    else:
        from uamix_jax.train.loop import train_and_evaluate

        train_and_evaluate(config, workdir)


if __name__ == "__main__":
    app.run(main)
