"""Few-shot accuracy of the encoder being trained, every `fewshot.every` steps (big_vision's few-shot evaluator).

    evaluator = PeriodicFewShot.from_config(config.fewshot, encoder)   # once, before the loop
    metrics.update(evaluator(params["encoder"], step))                 # {"fewshot/<label>/5way1shot": %, ..._ci95}

Per call: every clip of the labelled set `fewshot.data` is embedded with the current encoder parameters
(`embed.embed_manifest`; nothing is cached across calls, as the parameters change), then the N-way K-shot
nearest-centroid accuracy over `episodes` episodes (`fewshot.evaluate_fewshot`, mean ± 1.96·std/√E in percent).
The episodes come from the fixed `seed` and the clips from a fixed manifest, so the values of different steps are
measured on the same episodes and differ only through the encoder. The input policy is the few-shot command's:
T = the encoder's target_length, centre crop, statistics `fewshot.data.stats` (default AudioSet's).

The `fewshot` block (configs: uamix_jax/train/config_base.py): every (steps, 0 = off: read by the loop), ways,
shots, queries, episodes, seed, and optionally batch_size (32), worker_count (0); `data`: name, root, split, label,
and optionally tfds_name, stats ('audioset'), clip_seconds (30), crop ('centre'). Runs on process 0 only (the
embeddings of a few-shot set fit one host); the other processes get {}.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from uamix_jax.data.bad_audio import BadAudioLog, check_manifest
from uamix_jax.data.manifest import Manifest
from uamix_jax.evaluation.embed import InputPolicy, embed_manifest, make_embed_fn
from uamix_jax.evaluation.episodes import sample_episodes
from uamix_jax.evaluation.fewshot import evaluate_fewshot
from uamix_jax.evaluation.fewshot_main import dataset_label, load_labelled_manifest
from uamix_jax.models.vit import AudioMAEEncoder


class PeriodicFewShot:
    """Callable (encoder_params, step) -> {"fewshot/<label>/<N>way<K>shot": accuracy %, "..._ci95": 95 % CI %}."""

    def __init__(self, manifest: Manifest, encoder: AudioMAEEncoder, *, label: str, policy: InputPolicy,
                 ways: int = 5, shots: int = 1, queries: int = 15, episodes: int = 600, seed: int = 0,
                 batch_size: int = 32, worker_count: int = 0,
                 bad_audio_log: str | BadAudioLog | None = None):
        self.manifest, self.encoder, self.label, self.policy = manifest, encoder, label, policy
        self.ways, self.shots, self.queries, self.episodes, self.seed = ways, shots, queries, episodes, seed
        self.batch_size, self.worker_count = batch_size, worker_count
        self.bad_audio_log = bad_audio_log if isinstance(bad_audio_log, BadAudioLog) else BadAudioLog(bad_audio_log)
        # Fail now, not hours into training: too few classes for the setting raises here with the same message.
        sample_episodes(manifest.labels, ways=ways, shots=shots, queries=queries, episodes=1, seed=seed)
        self._embed_fn = make_embed_fn(encoder, policy)  # one jitted function for every call: no retracing

    @classmethod
    def from_config(cls, fewshot: ml_collections.ConfigDict, encoder: AudioMAEEncoder, *,
                    bad_audio_log: str | BadAudioLog | None = None) -> PeriodicFewShot:
        """From a training config's `fewshot` block (module docstring) and the encoder module being trained."""
        data = fewshot.data
        if data.name != "tfds" and not data.root:
            raise ValueError("config.fewshot.every > 0 evaluates few-shot accuracy on a labelled set, but "
                             "config.fewshot.data.root is empty: set config.fewshot.data.name and .root (e.g. "
                             "name=esc50 root=/data/ESC-50-master), or set config.fewshot.every=0")
        manifest = load_labelled_manifest(data)
        check_manifest(manifest)
        policy = InputPolicy(target_length=encoder.target_length, stats=data.get("stats", "audioset"),
                             crop=data.get("crop", "centre"), clip_seconds=float(data.get("clip_seconds", 30.0)))
        return cls(manifest, encoder, label=dataset_label(data), policy=policy, ways=int(fewshot.ways),
                   shots=int(fewshot.shots), queries=int(fewshot.queries), episodes=int(fewshot.episodes),
                   seed=int(fewshot.seed), batch_size=int(fewshot.get("batch_size", 32)),
                   worker_count=int(fewshot.get("worker_count", 0)), bad_audio_log=bad_audio_log)

    @property
    def key(self) -> str:
        """The accuracy's metric name; its CI is `key + "_ci95"`."""
        return f"fewshot/{self.label}/{self.ways}way{self.shots}shot"

    def __call__(self, encoder_params: Any, step: int) -> dict[str, float]:
        """Accuracy of the encoder with `encoder_params` (the encoder's own tree, host or device arrays)."""
        if jax.process_index() != 0:
            return {}
        emb, valid = embed_manifest(self.manifest, self.encoder, {"params": encoder_params}, policy=self.policy,
                                    batch_size=self.batch_size, worker_count=self.worker_count, progress=False,
                                    bad_audio_log=self.bad_audio_log, embed_fn=self._embed_fn)
        labels = np.where(valid, self.manifest.labels, -1).astype(np.int32)
        result = evaluate_fewshot(emb, labels, ways=self.ways, shots=self.shots, queries=self.queries,
                                  episodes=self.episodes, seed=self.seed)
        logging.info("step %d: %d-way %d-shot on %s: %.2f ± %.2f %%", step, self.ways, self.shots, self.label,
                     result["accuracy_mean"], result["ci95"])
        return {self.key: result["accuracy_mean"], f"{self.key}_ci95": result["ci95"]}
