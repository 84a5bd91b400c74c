"""Few-shot accuracy of the encoder being trained, every `fewshot.every` steps (big_vision's few-shot evaluator).

    evaluator = PeriodicFewShot.from_config(config, encoder)     # once, before the loop
    metrics.update(evaluator(params["encoder"], step))             # {"fewshot/<set>/5way1shot": %, ..._ci95}

Per call, for each labelled set: every clip is embedded with the current encoder parameters (nothing is cached
across calls, as the parameters change; the jitted forward pass is reused), then the N-way K-shot nearest-centroid
accuracy over `episodes` episodes (`fewshot_driver.score_fewshot`, mean ± 1.96·std/√E in percent). The episodes come
from the fixed `fewshot.seed` and the clips from fixed manifests, so the values of different steps are measured on
the same episodes and differ only through the encoder. The input policy is the few-shot command's: T = the
encoder's target_length, the data block's crop and clip_seconds, statistics `fewshot.data.stats`.

Config (`uamix_jax.config_base.add_periodic_fewshot`): fewshot.every (steps; 0 = off), ways, shots, queries, episodes,
seed; fewshot.data: a data block (name, root, split, label, classes, stats, clip_seconds, crop, worker_count). Its
root may name several folder-layout sets as NAME=FOLDER,NAME=FOLDER (then each is logged under its NAME), and
`classes` keeps a subset of every set's classes (e.g. 'dev', the dev half of `data.layouts.class_halves`).
eval.batch_size is the embedding batch. Runs on process 0 only (the embeddings of a few-shot set fit one host); the
other processes get {}.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from uamix_jax.data.bad_audio import BadAudioLog, check_manifest
from uamix_jax.data.layouts import dataset_label, read_configured_dataset
from uamix_jax.data.manifest import Manifest
from uamix_jax.evaluation.embed import InputPolicy, embed_manifest
from uamix_jax.evaluation.episodes import sample_episodes
from uamix_jax.evaluation.fewshot_driver import Embedder, score_fewshot
from uamix_jax.models.vit import AudioMAEEncoder
from uamix_jax.sharding import host_copy


def named_sets(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{label: data block} of a data block whose root is one dataset, or NAME=FOLDER,NAME=FOLDER folder sets."""
    data = dict(data)
    root = data.get("root", "")
    if "=" not in root or os.path.exists(root):
        return {dataset_label(data): data}
    sets = {}
    for item in root.split(","):
        name, sep, folder = item.strip().partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"config.fewshot.data.root: {item!r} is not NAME=FOLDER (several sets are given as "
                             f"NAME=FOLDER,NAME=FOLDER)")
        sets[dataset_label({"name": "folder", "label": name})] = {**data, "name": "folder", "root": folder,
                                                                  "label": name}
    return sets


class PeriodicFewShot:
    """Callable (encoder_params, step) -> {"fewshot/<set>/<N>way<K>shot": accuracy %, "..._ci95": 95 % CI %}."""

    def __init__(self, manifests: Mapping[str, Manifest], encoder: AudioMAEEncoder, *, policy: InputPolicy,
                 ways: int = 5, shots: int = 1, queries: int = 15, episodes: int = 600, seed: int = 0,
                 batch_size: int = 32, worker_count: int = 0, bad_audio_log: str | BadAudioLog | None = None):
        self.manifests, self.encoder, self.policy = dict(manifests), encoder, policy
        self.ways, self.shots, self.queries, self.episodes, self.seed = ways, shots, queries, episodes, seed
        self.batch_size, self.worker_count = batch_size, worker_count
        self.bad_audio_log = bad_audio_log if isinstance(bad_audio_log, BadAudioLog) else BadAudioLog(bad_audio_log)
        for label, manifest in self.manifests.items():
            # Fail now, not hours into training: too few classes for the setting raises here with the same message.
            try:
                sample_episodes(manifest.labels, ways=ways, shots=shots, queries=queries, episodes=1, seed=seed)
            except ValueError as err:
                raise ValueError(f"config.fewshot.data {label!r}: {err}") from None

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, encoder: AudioMAEEncoder, *,
                    bad_audio_log: str | BadAudioLog | None = None) -> PeriodicFewShot:
        """From a training config's `fewshot` block (module docstring) and the encoder module being trained."""
        f, data = config.fewshot, config.fewshot.data
        if data.name != "tfds" and not data.root:
            raise ValueError("config.fewshot.every > 0 evaluates few-shot accuracy on a labelled set, but "
                             "config.fewshot.data.root is empty: set config.fewshot.data.name and .root (e.g. "
                             "name=esc50 root=/data/ESC-50-master), or set config.fewshot.every=0")
        manifests = {}
        for label, block in named_sets(data).items():
            manifests[label] = read_configured_dataset(block, labelled=True)
            check_manifest(manifests[label])
        policy = InputPolicy(target_length=encoder.target_length, stats=data.stats, crop=data.crop,
                             clip_seconds=float(data.clip_seconds))
        return cls(manifests, encoder, policy=policy, ways=int(f.ways), shots=int(f.shots), queries=int(f.queries),
                   episodes=int(f.episodes), seed=int(f.seed), batch_size=int(config.eval.batch_size),
                   worker_count=int(data.worker_count), bad_audio_log=bad_audio_log)

    def key(self, label: str) -> str:
        """The accuracy's metric name for set `label`; its CI is `key + "_ci95"`."""
        return f"fewshot/{label}/{self.ways}way{self.shots}shot"

    def __call__(self, encoder_params: Any, step: int) -> dict[str, float]:
        """Accuracy of the encoder with `encoder_params` (the encoder's own tree, host or device arrays)."""
        if jax.process_index() != 0:
            return {}
        variables = {"params": encoder_params}

        def embed(manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
            return embed_manifest(manifest, self.encoder, variables, policy=self.policy, batch_size=self.batch_size,
                                  worker_count=self.worker_count, progress=False, bad_audio_log=self.bad_audio_log)

        out = {}
        for label, manifest in self.manifests.items():
            (result,) = score_fewshot([Embedder("encoder", f"step {step}", embed)], manifest,
                                      [(self.ways, self.shots)], queries=self.queries, episodes=self.episodes,
                                      seed=self.seed, dataset=label)
            r = result.record
            logging.info("step %d: %d-way %d-shot on %s: %.2f ± %.2f %%", step, self.ways, self.shots, label,
                         r["accuracy_mean"], r["ci95"])
            out.update({self.key(label): r["accuracy_mean"], f"{self.key(label)}_ci95": r["ci95"]})
        return out


def periodic_fewshot(config: ml_collections.ConfigDict, encoder: AudioMAEEncoder, workdir: str | None = None
                     ) -> tuple[Any, int]:
    """(evaluate(state, step) → metrics, every) for a training config with fewshot.every > 0, else (None, 0).

    `state.params['encoder']` is the encoder being trained; unreadable clips are listed in <workdir>/bad_audio.txt.
    """
    every = int(config.fewshot.get("every", 0))
    if every <= 0:
        return None, 0
    log = os.path.join(workdir, "bad_audio.txt") if workdir else None
    evaluator = PeriodicFewShot.from_config(config, encoder, bad_audio_log=log)

    def evaluate(state: Any, step: int) -> dict[str, float]:
        return evaluator(host_copy(state.params["encoder"]), step)

    return evaluate, every
