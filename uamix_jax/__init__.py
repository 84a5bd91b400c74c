"""uamix-jax: uaMix-MAE (ICASSP 2024) in JAX/Flax.

The public API is imported lazily, so `import uamix_jax` stays cheap and never pulls in torch or TensorFlow:

    from uamix_jax import kaldi_fbank, t_cutmix, soft_nnclr_loss, load_audiomae
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # audio
    "load_audio": "uamix_jax.audio.io",
    "AudioLoadError": "uamix_jax.audio.io",
    "kaldi_fbank": "uamix_jax.audio.fbank",
    "waveform_to_fbank": "uamix_jax.audio.features",
    "audiomae_features": "uamix_jax.audio.features",
    "pad_or_crop_frames": "uamix_jax.audio.features",
    "normalize_fbank": "uamix_jax.audio.features",
    "DATASET_STATS": "uamix_jax.audio.features",
    "load_audiomae_input": "uamix_jax.audio.features",
    "make_views": "uamix_jax.audio.augment",
    "augment_view": "uamix_jax.audio.augment",
    "eval_view": "uamix_jax.audio.augment",
    # models
    "AudioMAEEncoder": "uamix_jax.models.vit",
    "VIT_SIZES": "uamix_jax.models.vit",
    "NNCLRHead": "uamix_jax.models.head",
    "Projector": "uamix_jax.models.head",
    "Predictor": "uamix_jax.models.head",
    "MAEDecoder": "uamix_jax.models.mae",
    "random_masking": "uamix_jax.models.mae",
    "patchify": "uamix_jax.models.mae",
    # objectives
    "t_cutmix": "uamix_jax.objectives.mixing",
    "tf_cutmix": "uamix_jax.objectives.mixing",
    "mixup": "uamix_jax.objectives.mixing",
    "mix_groups": "uamix_jax.objectives.mixing",
    "sample_lambda": "uamix_jax.objectives.mixing",
    "soft_targets": "uamix_jax.objectives.losses",
    "soft_nnclr_loss": "uamix_jax.objectives.losses",
    "nnclr_loss": "uamix_jax.objectives.losses",
    "nearest_neighbour": "uamix_jax.objectives.neighbours",
    "nearest_neighbour_with_index": "uamix_jax.objectives.neighbours",
    "update_queue": "uamix_jax.objectives.queue",
    "init_queue": "uamix_jax.objectives.queue",
    "mae_loss": "uamix_jax.objectives.mae",
    # data
    "read_dataset": "uamix_jax.data.layouts",
    "make_pipeline": "uamix_jax.data.pipeline",
    # checkpoints, encoders, evaluation, training
    "load_audiomae": "uamix_jax.interop.audiomae",
    "load_encoder": "uamix_jax.evaluation.encoders",
    "evaluate_fewshot": "uamix_jax.evaluation.fewshot",
    "score_fewshot": "uamix_jax.evaluation.fewshot_driver",
    "paired_difference": "uamix_jax.evaluation.paired",
    "paired_over_seeds": "uamix_jax.evaluation.paired",
    "train_and_evaluate": "uamix_jax.train.tune",
    "run_training": "uamix_jax.train.loop",
    "pretrain": "uamix_jax.train.pretrain",
    "finetune": "uamix_jax.train.finetune",
    "run_linear_probe": "uamix_jax.evaluation.linear_probe",
    "mean_average_precision": "uamix_jax.evaluation.metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'uamix_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
