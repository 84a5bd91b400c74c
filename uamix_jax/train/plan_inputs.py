"""What planning compiles for a config: its per-device step, its state as abstract shapes, and its batch's shapes.

The one place that knows how each training task (pretraining, stage 1/2 tuning, fine-tuning) builds its step and
state; `uamix_jax.train.tpu_plan` compiles what it returns for a TPU slice. The states come from each task's own
constructor run under `jax.eval_shape`, so nothing is allocated at any model size; the optimizer's label trees
(strings) are derived from the abstract parameters outside the trace.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from uamix_jax.audio.fbank import SAMPLE_RATE
from uamix_jax.train.state import TrainState

Step = Callable[[TrainState, dict[str, jax.Array], jax.Array], tuple[TrainState, dict[str, jax.Array]]]

# Classes of the fine-tuning datasets whose presets configs/finetune.py has (the head is C × width); 'folder' is the
# demo's synthetic set. Other datasets are planned with AudioSet's 527 (a head of 0.4 M parameters: the choice
# changes the plan by at most a few MiB).
FINETUNE_CLASSES = {"audioset": 527, "esc50": 50, "speechcommands": 35, "voxceleb1": 1251, "folder": 8}
DEFAULT_CLASSES = 527
_TOTAL_STEPS = 1000  # the schedule's length changes no shape


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


def _abstract(fn: Callable[[jax.Array], Any]) -> Any:
    """fn(key)'s result as a tree of jax.ShapeDtypeStruct (traced, never run)."""
    return jax.eval_shape(fn, jax.random.key(0))


def _batch(keys: tuple[str, ...], global_batch: int, clip_samples: int, num_classes: int = 0
           ) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch the pipeline hands the step (uamix_jax.data.pipeline's fields), as shapes."""
    shapes = {"waveform": ((global_batch, clip_samples), np.float32), "length": ((global_batch,), np.int32),
              "index": ((global_batch,), np.int32), "label": ((global_batch,), np.int32),
              "multi_hot": ((global_batch, num_classes), np.bool_)}
    return {k: jax.ShapeDtypeStruct(*shapes[k]) for k in keys}


def planning_inputs(config: ml_collections.ConfigDict, num_devices: int, global_batch: int
                    ) -> tuple[Step, TrainState, dict[str, jax.ShapeDtypeStruct]]:
    """(per-device step, abstract TrainState, abstract global batch) of config's training task.

    The step is the one the trainer runs as jit(shard_map(step)) over a 1-D 'data' mesh of `num_devices` devices
    (`uamix_jax.train.step.shard_train_step`); the batch's leading axis is the global batch.
    """
    del num_devices  # every task's step is written per device; the count enters through the batch's sharding
    task = task_name(config)
    clip_samples = int(round(config.data.clip_seconds * SAMPLE_RATE))
    if task == "pretrain":
        from uamix_jax.train.pretrain import BATCH_KEYS, build_mae, create_state, make_pretrain_step, pretrain_options

        encoder, decoder = build_mae(config)
        state = _abstract(lambda key: create_state(config, encoder, decoder, _TOTAL_STEPS, key)[0])
        return (make_pretrain_step(encoder, decoder, pretrain_options(config)), state,
                _batch(BATCH_KEYS, global_batch, clip_samples))
    if task == "finetune":
        from uamix_jax.train.finetune import build_encoder, create_state, options_from_config
        from uamix_jax.train.finetune_step import classifier_head, make_finetune_step

        classes = finetune_classes(config)
        encoder, head = build_encoder(config), classifier_head(classes)
        state = _abstract(lambda key: create_state(config, encoder, head, _TOTAL_STEPS, 0, key)[0])
        options = options_from_config(config, classes, multi_hot=bool(config.finetune.multilabel))
        return (make_finetune_step(encoder, head, options), state,
                _batch(options.batch_keys, global_batch, clip_samples, classes))

    from uamix_jax.train import build, optim
    from uamix_jax.train.step import make_train_step

    encoder, head = build.build_models(config)
    state = _abstract(lambda key: build.create_state(config, encoder, head, _TOTAL_STEPS, key)[0])
    rules, _ = optim.stage_rules(config.stage, encoder.depth, config.optim.layer_decay)
    trainable = optim.trainable_mask(optim.label_params(state.params, rules))
    step = make_train_step(encoder, head, build.step_options(config), trainable)
    return step, state, _batch(("waveform", "length", "index", "label"), global_batch, clip_samples)
