"""Command line: parse flags, then run the config's task (one table below). Nothing else.

    python -m uamix_jax.main --config=configs/pretrain_mae.py --workdir=W0
    python -m uamix_jax.main --config=configs/stage1.py --workdir=W1 --config.init_from=ckpt/audiomae
    python -m uamix_jax.main --config=configs/stage2.py --workdir=W2 --config.init_from=W1
    python -m uamix_jax.main --config=configs/finetune.py:esc50 --workdir=W3 --config.init_from=W2
    python -m uamix_jax.main --config=configs/fewshot.py --workdir=OUT --config.init_from=W2
    python -m uamix_jax.main --config=configs/stage2.py:demo --workdir=/tmp/uamix_demo
"""
from __future__ import annotations

import importlib
import os

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs (resumes when it has some).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host TPU/GPU runs).")
config_flags.DEFINE_config_file("config", None, "A config file, e.g. configs/stage1.py or configs/stage2.py:demo.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])

# config.task → the function that runs it, called as fn(config, workdir); imported only when chosen.
TASKS = {
    "tune": "uamix_jax.train.tune:train_and_evaluate",  # uaMix-MAE contrastive tuning, stage 1 or 2
    "demo": "uamix_jax.train.tuning_demo:run_demo",  # synthetic data, stage 1 → stage 2 → few-shot on unseen classes
    "pretrain": "uamix_jax.train.pretrain:pretrain",  # AudioMAE's masked-autoencoder pretraining
    "finetune": "uamix_jax.train.finetune:finetune",  # AudioMAE's fine-tuning recipe (the paper's Table 4)
    "fewshot": "uamix_jax.evaluation.fewshot_main:run_fewshot",  # N-way K-shot episodes (Table 2, Fig. 3)
    "linear_probe": "uamix_jax.evaluation.linear_probe:run_linear_probe",  # frozen encoder, linear classifier
}


def task_function(task: str):
    """The function that runs `task` (a key of TASKS)."""
    if task not in TASKS:
        raise app.UsageError(f"config.task={task!r} is not a task; choose one of {sorted(TASKS)}")
    module, name = TASKS[task].split(":")
    return getattr(importlib.import_module(module), name)


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
    if "task" not in config:
        raise app.UsageError(f"the config has no `task` field; it must name one of {sorted(TASKS)}")
    task_function(config.task)(config, workdir)


if __name__ == "__main__":
    app.run(main)
