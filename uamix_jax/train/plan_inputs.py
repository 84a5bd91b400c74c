"""What planning compiles for a config: its training task built from abstract shapes, and its batch's shapes.

The tasks are the trainer's own (`tune_task`, `pretrain_task`, `finetune_task` with `abstract=True`: the state as
`jax.ShapeDtypeStruct` leaves from `jax.eval_shape`, nothing allocated at any model size), on a `TrainingPlan` for
the planned machine's device and process counts rather than this one's; `uamix_jax.train.tpu_plan` compiles them
for a TPU slice.
"""
from __future__ import annotations

import jax
import ml_collections
import numpy as np

from uamix_jax.audio.fbank import SAMPLE_RATE
from uamix_jax.train.loop import TrainingPlan, TrainTask, plan_training

# Classes of the fine-tuning datasets whose presets configs/finetune.py has (the head is C × width); 'folder' is the
# demo's synthetic set. Other datasets are planned with AudioSet's 527 (a head of 0.4 M parameters: the choice
# changes the plan by at most a few MiB).
FINETUNE_CLASSES = {"audioset": 527, "esc50": 50, "speechcommands": 35, "voxceleb1": 1251, "folder": 8}
DEFAULT_CLASSES = 527


def task_name(config: ml_collections.ConfigDict) -> str:
    """'pretrain', 'stage1', 'stage2' or 'finetune': the training task config.task (and config.stage) names."""
    task = config.get("task", "tune")
    if task in ("tune", "demo"):
        return f"stage{config.stage}"
    if task in ("pretrain", "finetune"):
        return task
    raise ValueError(f"config.task={task!r} has no training step to plan; planning covers 'pretrain', 'tune' "
                     f"(config.stage 1 or 2), 'demo' and 'finetune'")


def finetune_classes(config: ml_collections.ConfigDict) -> int:
    """The head's classes for a fine-tuning config (FINETUNE_CLASSES[config.data.name], else 527)."""
    return FINETUNE_CLASSES.get(config.data.name, DEFAULT_CLASSES)


def batch_multiple(config: ml_collections.ConfigDict) -> int:
    """Rows per device the step's batch must be a multiple of: the mix group (tuning; fine-tuning with mixup)."""
    task = task_name(config)
    if task.startswith("stage"):
        return max(1, int(config.mix.group))
    if task == "finetune" and config.finetune.mixup_prob > 0:
        return max(2, int(config.finetune.mix_group))
    return 1


def allowed_global_batches(config: ml_collections.ConfigDict, devices: int, upto: int) -> list[int]:
    """The global batches up to `upto` the task's step takes on `devices` devices, ascending: multiples of
    devices × batch_multiple(config) and, for tuning, divisors of the queue size (its FIFO writes whole batches)."""
    unit = devices * batch_multiple(config)
    out = list(range(unit, upto + 1, unit))
    if task_name(config).startswith("stage"):
        out = [b for b in out if config.nnclr.queue_size % b == 0]
    return out


def planned_run(config: ml_collections.ConfigDict, devices: int, processes: int, global_batch: int
                ) -> tuple[ml_collections.ConfigDict, TrainingPlan]:
    """(config at `global_batch`, its TrainingPlan on `devices` devices in `processes` processes): one epoch of one
    step when the config counts in epochs (the schedule's length changes no shape)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.train.global_batch = global_batch
    return config, plan_training(config, global_batch, devices=devices, processes=processes)


def planning_task(config: ml_collections.ConfigDict, devices: int, processes: int, global_batch: int) -> TrainTask:
    """config's training task as the trainer builds it on that machine, from abstract shapes."""
    task = task_name(config)
    config, plan = planned_run(config, devices, processes, global_batch)
    if task == "pretrain":
        from uamix_jax.train.pretrain import pretrain_task

        return pretrain_task(config, plan, abstract=True)
    if task == "finetune":
        from uamix_jax.train.finetune import finetune_task

        return finetune_task(config, plan, finetune_classes(config), multi_hot=bool(config.finetune.multilabel),
                             abstract=True)
    from uamix_jax.train.tune import tune_task

    return tune_task(config, plan, abstract=True)


def abstract_batch(task: TrainTask, config: ml_collections.ConfigDict, global_batch: int
                   ) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch the pipeline hands `task`'s step (uamix_jax.data.pipeline's fields), as shapes."""
    clip_samples = int(round(config.data.clip_seconds * SAMPLE_RATE))
    classes = finetune_classes(config) if task_name(config) == "finetune" else 0
    shapes = {"waveform": ((global_batch, clip_samples), np.float32), "length": ((global_batch,), np.int32),
              "index": ((global_batch,), np.int32), "label": ((global_batch,), np.int32),
              "multi_hot": ((global_batch, classes), np.bool_)}
    return {k: jax.ShapeDtypeStruct(*shapes[k]) for k in task.batch_keys}
