"""Few-shot accuracy of frozen embeddings: prototypical-network episodes, all evaluated in one jitted call.

For an episode with support embeddings s_{n,k} and query embeddings q (all L2-normalised, ê = e / ‖e‖):

    c_n      = (1/K) Σ_k ŝ_{n,k}                     class centroid (prototype), not re-normalised
    ŷ(q)     = argmin_n ‖q̂ − c_n‖²                   nearest centroid, squared Euclidean (Snell et al., 2017)
    acc_e    = (1/|Q_e|) Σ_{q ∈ Q_e} [ŷ(q) = y(q)]    over the episode's valid queries
    reported = mean_e acc_e ± 1.96 · std_e(acc_e) / √E   (std with ddof = 0), both in percent

Squared Euclidean distance is the prototypical network's choice. On unit vectors it differs from cosine similarity to
the centroid only through ‖c_n‖², which shrinks when a class's support clips disagree (for K = 1 the two coincide).
"""
from __future__ import annotations

import functools
import hashlib
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from uamix_jax.evaluation.episodes import Episodes, sample_episodes

CI_Z = 1.96  # two-sided 95 % normal quantile
_CHUNK_BYTES = 64 * 2**20  # gathered support + query embeddings per chunk of episodes


def _chunk_size(episodes: int, ways: int, per_class: int, dim: int) -> int:
    """Episodes per vectorised chunk so the gathered [chunk, N, K + Q, D] float32 stays near 64 MiB."""
    return int(max(1, min(episodes, _CHUNK_BYTES // max(1, ways * per_class * dim * 4))))


@functools.partial(jax.jit, static_argnames=("chunk",))
def _correct_counts(embeddings: jax.Array, support: jax.Array, query: jax.Array, query_mask: jax.Array, *,
                    chunk: int) -> tuple[jax.Array, jax.Array]:
    unit = embeddings / jnp.maximum(jnp.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)
    ways = support.shape[1]

    def one_episode(idx: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        s, q, mask = idx  # [N, K], [N, Q], [N, Q] per episode (lax.map vmaps over a chunk of episodes)
        centroids = jnp.mean(unit[s], axis=1)  # [N, D]
        # ‖q − c‖² = ‖q‖² − 2 q·c + ‖c‖²; ‖q‖² is the same for every class, so the argmin needs only the rest.
        # HIGHEST precision: TPUs would otherwise round the float32 dot products to bfloat16 passes.
        dots = jnp.einsum("qnd,md->qnm", unit[q].transpose(1, 0, 2), centroids,
                          precision=jax.lax.Precision.HIGHEST)  # [Q, N, N]
        scores = 2.0 * dots - jnp.sum(centroids * centroids, axis=-1)
        correct = (jnp.argmax(scores, axis=-1) == jnp.arange(ways)[None, :]) & mask.T
        return jnp.sum(correct, dtype=jnp.int32), jnp.sum(mask, dtype=jnp.int32)

    # lax.map over chunks of `chunk` episodes, each chunk vectorised: bounded memory, one compiled call.
    return jax.lax.map(one_episode, (support, query, query_mask), batch_size=chunk)


def episode_accuracies(embeddings: jax.Array | np.ndarray, support: np.ndarray, query: np.ndarray,
                       query_mask: np.ndarray | None = None) -> np.ndarray:
    """Nearest-centroid accuracy of each episode, correct / valid queries in [0, 1], float64 [E] (module docstring).

    embeddings float [M, D] (normalised here), support int [E, N, K], query int [E, N, Q] (rows of embeddings; the
    query of class slot n belongs to class n), query_mask bool [E, N, Q] (None: all valid). One jitted call for all
    E episodes, in chunks (`lax.map`) so gathered embeddings stay near 64 MiB whatever E, N, K, Q and D are.
    """
    embeddings = jnp.asarray(embeddings)
    support, query = np.asarray(support), np.asarray(query)
    query_mask = np.ones(query.shape, bool) if query_mask is None else np.asarray(query_mask, bool)
    chex.assert_rank([embeddings, support, query, query_mask], [2, 3, 3, 3])
    chex.assert_type(embeddings, jnp.floating)
    chex.assert_equal_shape_prefix([support, query, query_mask], 2)
    chex.assert_equal_shape([query, query_mask])
    if not (np.issubdtype(support.dtype, np.integer) and np.issubdtype(query.dtype, np.integer)):
        raise TypeError(f"support and query must be integer index arrays, got {support.dtype} and {query.dtype}")
    m = embeddings.shape[0]
    for name, idx in (("support", support), ("query", query[query_mask])):
        if idx.size and (idx.min() < 0 or idx.max() >= m):
            raise IndexError(f"{name} indices must lie in [0, {m}) (rows of embeddings [{m}, D]); "
                             f"found [{idx.min()}, {idx.max()}]")
    if not query_mask.any(axis=(1, 2)).all():
        raise ValueError("every episode needs at least one valid query (query_mask is all False somewhere)")
    e, n, k = support.shape
    chunk = _chunk_size(e, n, k + query.shape[2], embeddings.shape[1])
    correct, total = _correct_counts(embeddings, jnp.asarray(support, jnp.int32), jnp.asarray(query, jnp.int32),
                                     jnp.asarray(query_mask), chunk=chunk)
    # counts leave the device as integers, so the fractions are exact ratios, not float32 roundings
    return np.asarray(correct, np.float64) / np.asarray(total, np.float64)


def confidence_interval(accuracies: np.ndarray) -> tuple[float, float]:
    """(mean, 1.96 · std / √E) of per-episode accuracies [E], in the units given (std with ddof = 0)."""
    acc = np.asarray(accuracies, np.float64)
    if acc.ndim != 1 or acc.size == 0:
        raise ValueError(f"accuracies must be a non-empty 1-D array [E], got shape {acc.shape}")
    return float(acc.mean()), float(CI_Z * acc.std() / math.sqrt(acc.size))


def episodes_hash(episodes: Episodes) -> str:
    """SHA-256 (hex) of the episode index arrays (support, query, query_mask, with their shapes): equal hashes mean
    two results were scored on the same episodes of the same clips."""
    h = hashlib.sha256()
    for array in (episodes.support, episodes.query, episodes.query_mask):
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def fewshot_record(episodes: Episodes, accuracies: np.ndarray, *, seed: int, num_clips: int) -> dict[str, Any]:
    """The JSON-ready result of scoring `episodes`: ways, shots, queries (asked), queries_min (fewest any class
    offers), short_classes ({label id: queries} for classes with fewer than asked), episodes, seed, accuracy_mean and
    ci95 (percent), num_classes (classes that can take part), num_clips, episodes_sha256 (`episodes_hash`)."""
    mean, ci = confidence_interval(100.0 * np.asarray(accuracies, np.float64))
    _, ways, shots = episodes.support.shape
    return {
        "ways": int(ways), "shots": int(shots), "queries": int(episodes.query.shape[2]),
        "queries_min": int(min(episodes.queries_per_class.values())),
        "short_classes": {str(c): q for c, q in sorted(episodes.short_classes.items())},
        "episodes": episodes.num_episodes, "seed": int(seed), "accuracy_mean": mean, "ci95": ci,
        "num_classes": len(episodes.queries_per_class), "num_clips": int(num_clips),
        "episodes_sha256": episodes_hash(episodes),
    }


def evaluate_fewshot(embeddings: jax.Array | np.ndarray, labels: np.ndarray, *, ways: int = 5, shots: int = 1,
                     queries: int = 15, episodes: int = 600, seed: int = 0) -> dict[str, Any]:
    """N-way K-shot nearest-centroid accuracy of `embeddings` float [M, D] with `labels` int [M] (-1: not used).

    Samples `episodes` episodes from `seed` (`sample_episodes`), evaluates them in one jitted call and returns
    `fewshot_record`'s dict. Pure: no I/O. To score several encoders on the same episodes and keep the per-episode
    accuracies, use `uamix_jax.evaluation.fewshot_driver.score_fewshot`.
    """
    embeddings = jnp.asarray(embeddings)
    labels = np.asarray(labels)
    chex.assert_rank([embeddings, labels], [2, 1])
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels [{labels.shape[0]}] and embeddings {tuple(embeddings.shape)} must have one row "
                         f"per clip")
    eps = sample_episodes(labels, ways=ways, shots=shots, queries=queries, episodes=episodes, seed=seed)
    acc = episode_accuracies(embeddings, eps.support, eps.query, eps.query_mask)
    return fewshot_record(eps, acc, seed=seed, num_clips=int(np.sum(labels >= 0)))
