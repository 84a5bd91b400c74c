"""Paired comparisons of two encoders scored on the same few-shot episodes, within one training seed and over seeds.

For encoders a and b on the same E episodes, with per-episode accuracies in percent, the paired difference of
episode e is d_e = a_e − b_e. Within one training seed (`paired_difference`):

    mean  d̄ = (1/E) Σ_e d_e
    95 %  d̄ ± 1.96 · s / √E,   s² = (1/E) Σ_e (d_e − d̄)²      (the same normal interval as each accuracy's CI)
    wins / ties / losses = #{d_e > 0}, #{d_e = 0}, #{d_e < 0}

Over n training seeds (each with its own tuned encoders, scored on the same E episodes; `paired_over_seeds`), with
m_s = the seed-level paired mean of seed s:

    mean  m̄ = (1/n) Σ_s m_s
    95 %  m̄ ± t_{0.975, n−1} · s_m / √n,   s_m² = (1/(n−1)) Σ_s (m_s − m̄)²   (t-interval, n − 1 degrees of freedom;
          t = 12.71 for 2 seeds, 4.30 for 3): what the training seed changes is in this interval;
    pooled episode interval: the within-seed formula over all n·E differences (episode sampling only);
    wins / ties / losses summed over all (seed, episode) pairs.

With one seed there is no seed-level interval; the episode interval is reported in its place.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from uamix_jax.evaluation.fewshot import CI_Z


def _as_percent_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired accuracies must be two non-empty 1-D arrays of the same episodes, got shapes "
                         f"{a.shape} and {b.shape}")
    return a - b


@functools.lru_cache(maxsize=64)
def t_quantile(dof: int) -> float:
    """t_{0.975, dof}, the two-sided 95 % quantile of Student's t (scipy.stats.t)."""
    return float(stats.t.ppf(0.975, dof))


def _counts(d: np.ndarray) -> dict[str, int]:
    return {"wins": int(np.sum(d > 0)), "ties": int(np.sum(d == 0)), "losses": int(np.sum(d < 0))}


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """a − b over the same episodes (accuracies in percent, [E] each): {mean, ci95_low, ci95_high, wins, ties,
    losses, episodes} (module docstring)."""
    d = _as_percent_pairs(a, b)
    mean, half = float(d.mean()), CI_Z * float(d.std()) / math.sqrt(d.size)
    return {"mean": mean, "ci95_low": mean - half, "ci95_high": mean + half, **_counts(d), "episodes": int(d.size)}


def paired_over_seeds(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> dict[str, Any]:
    """a − b over n seeds (lists of per-episode accuracies in percent, one [E] array per seed, the same episodes in
    every seed): {mean, ci95_low, ci95_high (seed-level t-interval; the episode interval for n = 1), seed_means,
    episode_ci95_low, episode_ci95_high (pooled over all n·E differences), wins, ties, losses, seeds}."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_over_seeds: one accuracy array per seed for both encoders, got {len(a)} and "
                         f"{len(b)}")
    diffs = [_as_percent_pairs(x, y) for x, y in zip(a, b)]
    means = np.array([d.mean() for d in diffs])
    pooled = paired_difference(np.concatenate([np.asarray(x, np.float64) for x in a]),
                               np.concatenate([np.asarray(y, np.float64) for y in b]))
    n = len(diffs)
    mean = float(means.mean())
    if n > 1:
        half = t_quantile(n - 1) * float(means.std(ddof=1)) / math.sqrt(n)
        low, high = mean - half, mean + half
    else:
        low, high = pooled["ci95_low"], pooled["ci95_high"]
    return {"mean": mean, "ci95_low": low, "ci95_high": high, "seed_means": means.tolist(),
            "episode_ci95_low": pooled["ci95_low"], "episode_ci95_high": pooled["ci95_high"],
            "wins": pooled["wins"], "ties": pooled["ties"], "losses": pooled["losses"], "seeds": n}
