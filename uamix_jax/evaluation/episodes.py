"""N-way K-shot episode sampling on the host: index arrays into an embedding matrix, drawn with numpy from a seed.

An episode picks N distinct classes; from each it draws K support clips and up to Q query clips, all distinct, so
support and query never share a clip. The result is a set of fixed-shape index arrays

    support [E, N, K], query [E, N, Q], query_mask [E, N, Q], classes [E, N]

that `uamix_jax.evaluation.fewshot` gathers from the cached [M, D] embeddings in one jitted call.

Queries per class: class c offers q_c = min(Q, n_c - K) queries, where n_c is its clip count. Classes with fewer than
K + 1 clips cannot take part. A class short of K + Q clips keeps all of its q_c queries and the rest of its Q slots
are masked out (`query_mask` False, index 0), so shapes stay static and every class still counts.

Sampling is vectorised over episodes: classes by argsort of uniform keys; clips by Floyd's algorithm (a uniform
subset of size K + q_c of the class's clips, drawn in K + Q vectorised steps without materialising a permutation of
every class, which matters for classes with tens of thousands of clips), then a uniform shuffle of that subset.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Episodes:
    """Index arrays of E episodes; `support`, `query` index rows of the labels/embeddings the sampler was given."""

    support: np.ndarray  # int32 [E, N, K]
    query: np.ndarray  # int32 [E, N, Q]; 0 where query_mask is False
    query_mask: np.ndarray  # bool [E, N, Q]
    classes: np.ndarray  # int32 [E, N], label ids
    queries_per_class: dict[int, int]  # label id -> q_c, for every class that can take part

    @property
    def num_episodes(self) -> int:
        return int(self.support.shape[0])

    @property
    def short_classes(self) -> dict[int, int]:
        """Classes that offer fewer than Q queries: label id -> q_c."""
        q = self.query.shape[2]
        return {c: n for c, n in self.queries_per_class.items() if n < q}


def class_members(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by label: (class ids [C] (sorted, label >= 0 only), counts [C], rows [sum counts]).

    Rows of class i are rows[offsets[i]:offsets[i] + counts[i]] with offsets = cumsum(counts) - counts; rows with a
    negative label (unknown, or excluded by the caller) are left out.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array [M], got {labels.dtype} {labels.shape}")
    known = np.flatnonzero(labels >= 0)
    order = known[np.argsort(labels[known], kind="stable")]
    class_ids, counts = np.unique(labels[order], return_counts=True)
    return class_ids.astype(np.int32), counts.astype(np.int64), order.astype(np.int64)


def _floyd_subsets(rng: np.random.Generator, population: np.ndarray, size: np.ndarray, max_size: int) -> np.ndarray:
    """Uniform random subsets, one per row: row p gets `size[p]` distinct values of range(population[p]).

    Floyd's algorithm, vectorised over rows: for step j = n - m .. n - 1, draw t ~ U{0..j}; keep t unless it is
    already in the subset, else keep j. Returns int64 [P, max_size] (entries beyond size[p] are -1), in the
    algorithm's order (not a uniform order: the caller shuffles).
    """
    rows = population.shape[0]
    chosen = np.full((rows, max_size), -1, dtype=np.int64)
    for step in range(max_size):  # max_size = K + Q steps, each over all rows at once
        active = step < size
        j = population - size + step  # the algorithm's j for this step; only used where active
        t = np.floor(rng.random(rows) * (j + 1)).astype(np.int64)
        seen = np.any(chosen[:, :step] == t[:, None], axis=1)
        chosen[:, step] = np.where(active, np.where(seen, j, t), -1)
    return chosen


def sample_episodes(labels: np.ndarray, *, ways: int, shots: int, queries: int, episodes: int,
                    seed: int) -> Episodes:
    """Draws `episodes` N-way K-shot episodes with up to Q queries per class from `labels` int [M] (-1: skip).

    Deterministic in (labels, ways, shots, queries, episodes, seed). Raises ValueError when fewer than `ways`
    classes have at least `shots` + 1 clips.
    """
    for name, value, low in (("ways", ways, 1), ("shots", shots, 1), ("queries", queries, 1),
                             ("episodes", episodes, 1)):
        if int(value) < low:
            raise ValueError(f"sample_episodes: {name} must be >= {low}, got {value}")
    if int(seed) < 0:
        raise ValueError(f"sample_episodes: seed must be non-negative, got {seed}")
    class_ids, counts, rows = class_members(labels)
    offsets = np.cumsum(counts) - counts
    usable = counts >= shots + 1
    if int(usable.sum()) < ways:
        raise ValueError(
            f"{ways}-way {shots}-shot episodes need {ways} classes with at least {shots + 1} labelled clips each; "
            f"only {int(usable.sum())} of {class_ids.shape[0]} classes have that many. Lower ways or shots, or "
            f"use a larger split")
    class_ids, counts, offsets = class_ids[usable], counts[usable], offsets[usable]
    per_class_q = np.minimum(queries, counts - shots)

    rng = np.random.default_rng([seed, ways, shots, queries])
    # N distinct classes per episode: the first N of a uniform random order of the usable classes.
    picked = np.argsort(rng.random((episodes, class_ids.shape[0])), axis=1)[:, :ways]  # [E, N]
    flat = picked.reshape(-1)
    take = shots + per_class_q[flat]  # clips drawn per (episode, class)
    subset = _floyd_subsets(rng, counts[flat], take, shots + queries)  # [E·N, K + Q], -1 past `take`
    # Uniform order inside each subset, padding (-1) last: sort by random keys, padding keyed +inf.
    keys = np.where(subset >= 0, rng.random(subset.shape), np.inf)
    subset = np.take_along_axis(subset, np.argsort(keys, axis=1), axis=1)
    valid = subset >= 0
    member_rows = rows[offsets[flat][:, None] + np.maximum(subset, 0)]  # [E·N, K + Q], dataset row indices

    e, n = episodes, ways
    support = member_rows[:, :shots].reshape(e, n, shots)
    query_mask = valid[:, shots:].reshape(e, n, queries)
    query = np.where(query_mask, member_rows[:, shots:].reshape(e, n, queries), 0)
    return Episodes(
        support=support.astype(np.int32), query=query.astype(np.int32), query_mask=query_mask,
        classes=class_ids[picked].astype(np.int32),
        queries_per_class={int(c): int(q) for c, q in zip(class_ids, per_class_q)})
