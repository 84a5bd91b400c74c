"""The one few-shot driver: several encoders scored on the same N-way K-shot episodes of one labelled set.

    embedders = [encoder_embedder("MAE", loaded, policy, cache_dir=...), ...]
    results = score_fewshot(embedders, manifest, settings=[(5, 1), (5, 5)], queries=15, episodes=600, seed=0)
    results[i].accuracies                      # per-episode accuracy [E] in [0, 1], for paired comparisons
    results[i].record["episodes_sha256"]       # the same for every encoder of one setting

Every clip is embedded by every encoder first; clips that any encoder could not read are left out for all of them,
so that the episodes, sampled once per (N, K) setting from the remaining labels, are the same for every encoder and
comparisons between encoders can be paired episode by episode (`uamix_jax.evaluation.paired`). The few-shot command,
the periodic evaluation during training, the tuning demo and the replication benchmark all score through here.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from uamix_jax.data.manifest import Manifest
from uamix_jax.evaluation.embed import InputPolicy, cached_embeddings, embed_manifest, params_fingerprint
from uamix_jax.evaluation.encoders import LoadedEncoder
from uamix_jax.evaluation.episodes import class_members, sample_episodes
from uamix_jax.evaluation.fewshot import episode_accuracies, fewshot_record

EmbedFn = Callable[[Manifest], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Embedder:
    """An encoder as the driver sees it: a name, a description for records, and embed(manifest) → (embeddings
    float [M, D], valid bool [M]). `info` holds fields for its records (e.g. the cache file); embed may add to it."""

    label: str
    description: str
    embed: EmbedFn
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class FewShotResult:
    """One encoder on one (N, K) setting: its per-episode accuracies and the JSON-ready record."""

    label: str
    accuracies: np.ndarray  # float64 [E], correct / valid queries per episode
    record: dict[str, Any]  # `fewshot.fewshot_record` + dataset, label, encoder, embeddings, extra fields

    @property
    def setting(self) -> tuple[int, int]:
        return int(self.record["ways"]), int(self.record["shots"])


def encoder_embedder(label: str, loaded: LoadedEncoder, policy: InputPolicy, *, cache_dir: str | None = None,
                     batch_size: int = 32, worker_count: int = 0, progress: bool = False,
                     bad_audio_log: str | None = None, report: Callable[[str], None] | None = None) -> Embedder:
    """A Flax encoder's embedder: `embed.cached_embeddings` in `cache_dir` (reused while weights, encoder fields,
    input policy and clips are unchanged; the record gets the cache file and the weights' SHA-256), or
    `embed.embed_manifest` afresh when cache_dir is None. report(message) hears where the embeddings came from."""
    info: dict[str, Any] = {"crop": policy.crop, "target_length": loaded.encoder.target_length,
                            "params_sha256": params_fingerprint(loaded.variables)}

    def embed(manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
        if cache_dir is None:
            return embed_manifest(manifest, loaded.encoder, loaded.variables, policy=policy, batch_size=batch_size,
                                  worker_count=worker_count, progress=progress, bad_audio_log=bad_audio_log)
        emb, valid, path, reused = cached_embeddings(
            manifest, loaded.encoder, loaded.variables, policy=policy, cache_dir=cache_dir, batch_size=batch_size,
            worker_count=worker_count, progress=progress, params_hash=info["params_sha256"],
            bad_audio_log=bad_audio_log)
        info["embeddings"] = path
        if report is not None:
            report(f"[{label}] embeddings {'reused from' if reused else 'written to'} {path}")
        return emb, valid

    return Embedder(label, loaded.description, embed, info)


def usable_classes(labels: np.ndarray, shots: int) -> int:
    """Classes with at least shots + 1 labelled clips (the ones a K-shot episode can draw)."""
    _, counts, _ = class_members(labels)
    return int(np.sum(counts >= shots + 1))


def score_fewshot(embedders: Sequence[Embedder], manifest: Manifest, settings: Sequence[tuple[int, int]] = ((5, 1),),
                  *, queries: int = 15, episodes: int = 600, seed: int = 0, dataset: str | None = None,
                  skip_unusable: bool = False,
                  on_embedded: Callable[[Embedder, np.ndarray, np.ndarray], None] | None = None,
                  on_skip: Callable[[int, int, int], None] | None = None) -> list[FewShotResult]:
    """Scores every embedder on the same episodes of `manifest` for each (ways, shots) setting (module docstring).

    Results are ordered by embedder, then setting. skip_unusable: settings with more ways than usable classes are
    skipped (a sweep; on_skip(ways, shots, usable classes) hears of each) instead of raising.
    on_embedded(embedder, embeddings, valid) is called once per embedder (e.g. to report unreadable clips). Class
    ids in `short_classes` are replaced by class names.
    """
    labels_known = [e.label for e in embedders]
    if len(set(labels_known)) != len(labels_known):
        raise ValueError(f"encoder labels must differ, got {labels_known}; name them as label=path")
    embedded = {}
    valid_all = np.ones((len(manifest),), bool)
    for e in embedders:
        emb, valid = e.embed(manifest)
        if on_embedded is not None:
            on_embedded(e, emb, valid)
        embedded[e.label] = emb
        valid_all &= valid
    labels = np.where(valid_all, manifest.labels, -1).astype(np.int32)
    sampled = []
    for ways, shots in settings:
        usable = usable_classes(labels, shots)
        if skip_unusable and ways > usable:
            if on_skip is not None:
                on_skip(ways, shots, usable)
            continue
        sampled.append(sample_episodes(labels, ways=ways, shots=shots, queries=queries, episodes=episodes,
                                       seed=seed))
    name = dataset or manifest.name
    results = []
    for e in embedders:
        for eps in sampled:
            acc = episode_accuracies(embedded[e.label], eps.support, eps.query, eps.query_mask)
            record = fewshot_record(eps, acc, seed=seed, num_clips=int(np.sum(labels >= 0)))
            record["short_classes"] = {manifest.class_names[int(c)]: q for c, q in record["short_classes"].items()}
            results.append(FewShotResult(e.label, acc, {"dataset": name, **record, "label": e.label,
                                                        "encoder": e.description, **e.info}))
    return results

