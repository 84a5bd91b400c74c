"""What benchmarks/replicate.py measures and writes: few-shot scores per seed, paired deltas, tables and figures.

    rows    a row per (encoder, seed, eval set, setting): accuracy ± 95 % CI over the episodes, on test classes
    deltas  paired differences a − b over the same episodes (`uamix_jax.evaluation.paired.paired_over_seeds`):
            every tuned variant against the MAE, and T-CutMix against every other variant, per eval set and over
            the sets ("mean": each seed's per-episode differences of all sets pooled, so a seed's mean is the mean
            over sets); with two seeds or more the interval is the seed-level t-interval, with one the episode one
    curves  dev-class 5-way 1-shot accuracy against the training step, read from each stage's metrics.jsonl
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uamix_jax.evaluation.paired import paired_over_seeds

REFERENCE = "MAE"
ANCHOR = "uaMix-MAE (T-CutMix)"


class LogMelStats(nn.Module):
    """The log-mel baseline as an encoder for the few-shot driver: no parameters, no network.

    x: the UNnormalised fbank [B, T, F] (the InputPolicy passes stats (0, ½), so its normalisation is the identity and
    padding frames stay exactly 0; a real frame never is: its mel channel 3 sits at log(eps)). With z = (x − μ)/(2σ)
    and the clip's own frames t ∈ V: embedding = [mean_{t∈V} z_t, std_{t∈V} z_t] ∈ R^{2F} (population std).
    Returns (z [B, T, F], embedding [B, 2F]) like the ViT's (tokens, embedding).
    """

    target_length: int
    stats: tuple[float, float]
    num_mel_bins: int = 128

    @property
    def width(self) -> int:
        return 2 * self.num_mel_bins

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean, std = self.stats
        real = jnp.any(x != 0, axis=-1, keepdims=True).astype(jnp.float32)  # [B, T, 1]
        n = jnp.maximum(jnp.sum(real, axis=1), 1.0)  # [B, 1]
        z = (x - mean) / (2.0 * std)
        mu = jnp.sum(z * real, axis=1) / n
        var = jnp.sum(jnp.square(z - mu[:, None, :]) * real, axis=1) / n
        return z, jnp.concatenate([mu, jnp.sqrt(var)], axis=-1)


IDENTITY_STATS = (0.0, 0.5)  # (x − 0) / (2 · 0.5) = x: the policy hands LogMelStats the raw fbank


# ---------------------------------------------------------------------------------------------------------- deltas
Scores = Mapping[tuple[str, int | None, str, int, int], np.ndarray]  # (encoder, seed, set, ways, shots) → acc [E]


def delta_pairs(tuned: Sequence[str]) -> list[tuple[str, str]]:
    """(a, b): every tuned encoder against the MAE, then T-CutMix against every other tuned encoder."""
    pairs = [(a, REFERENCE) for a in tuned]
    if ANCHOR in tuned:
        pairs += [(ANCHOR, b) for b in tuned if b != ANCHOR]
    return pairs


def _per_seed(scores: Scores, encoder: str, seeds: Sequence[int], sets: Sequence[str], ways: int,
              shots: int) -> list[np.ndarray]:
    """Per seed, the encoder's per-episode accuracies (percent) of `sets`, concatenated set after set. Encoders
    trained once for all seeds (the MAE, log-mel) are stored under seed None and repeat for every seed."""
    out = []
    for seed in seeds:
        parts = [scores.get((encoder, seed, s, ways, shots), scores.get((encoder, None, s, ways, shots)))
                 for s in sets]
        out.append(100.0 * np.concatenate(parts))
    return out


def compute_deltas(scores: Scores, tuned: Sequence[str], seeds: Sequence[int], sets: Sequence[str],
                   settings: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """Every delta of the module docstring: {a, b, eval, ways, shots, mean, ci95_low, ci95_high, wins, ties, losses,
    seeds, episode_ci95_low, episode_ci95_high, seed_means}."""
    out = []
    for ways, shots in settings:
        for a, b in delta_pairs(tuned):
            for eval_name, group in [*[(s, [s]) for s in sets], ("mean", list(sets))]:
                d = paired_over_seeds(_per_seed(scores, a, seeds, group, ways, shots),
                                      _per_seed(scores, b, seeds, group, ways, shots))
                out.append({"a": a, "b": b, "eval": eval_name, "ways": ways, "shots": shots, "mean": d["mean"],
                            "ci95_low": d["ci95_low"], "ci95_high": d["ci95_high"], "wins": d["wins"],
                            "ties": d["ties"], "losses": d["losses"], "seeds": list(seeds),
                            "episode_ci95_low": d["episode_ci95_low"], "episode_ci95_high": d["episode_ci95_high"],
                            "seed_means": d["seed_means"]})
    return out


# ---------------------------------------------------------------------------------------------------------- tables
def pooled_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (encoder, set, setting): the mean accuracy over seeds and the mean of the per-seed CIs."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["encoder"], r["eval"], r["ways"], r["shots"]), []).append(r)
    return [{"encoder": e, "eval": s, "ways": w, "shots": k,
             "accuracy_mean": float(np.mean([r["accuracy_mean"] for r in g])),
             "ci95": float(np.mean([r["ci95"] for r in g])), "seeds": len(g)}
            for (e, s, w, k), g in groups.items()]


def markdown_table(rows: Sequence[dict[str, Any]], deltas: Sequence[dict[str, Any]] = ()) -> str:
    """Per setting: a row per encoder, a column per eval set ('mean ± ci', percent, the mean over seeds), then a row
    per delta ('Δ [low, high]', points)."""
    rows = pooled_rows(rows)
    sets = list(dict.fromkeys(r["eval"] for r in rows))
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    out = []
    for ways, shots in dict.fromkeys((r["ways"], r["shots"]) for r in rows):
        seeds = max(r["seeds"] for r in rows)
        out += [f"**{ways}-way {shots}-shot** (accuracy %, mean over {seeds} seed(s) ± 95 % CI over the episodes; "
                f"Δ: paired difference in points [95 % interval])", "",
                "| encoder | " + " | ".join(sets) + " | mean |", "|---|" + "---|" * (len(sets) + 1)]
        for e in encoders:
            cells = []
            for s in sets:
                match = [r for r in rows if (r["encoder"], r["eval"], r["ways"], r["shots"]) == (e, s, ways, shots)]
                cells.append(f"{match[0]['accuracy_mean']:.1f} ± {match[0]['ci95']:.1f}" if match else "–")
            values = [r["accuracy_mean"] for r in rows if (r["encoder"], r["ways"], r["shots"]) == (e, ways, shots)]
            out.append(f"| {e} | " + " | ".join(cells) + f" | {np.mean(values):.1f} |")
        for d in [d for d in deltas if (d["ways"], d["shots"]) == (ways, shots)]:
            if d["eval"] != sets[0]:
                continue
            cells = [_delta_cell(x) for x in deltas if (x["a"], x["b"], x["ways"], x["shots"]) ==
                     (d["a"], d["b"], ways, shots) and x["eval"] in (*sets, "mean")]
            out.append(f"| Δ {d['a']} − {d['b']} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _delta_cell(d: Mapping[str, Any]) -> str:
    mark = "**" if d["ci95_low"] > 0 or d["ci95_high"] < 0 else ""
    return f"{mark}{d['mean']:+.1f} [{d['ci95_low']:+.1f}, {d['ci95_high']:+.1f}]{mark}"


# --------------------------------------------------------------------------------------------------------- figures
def bar_chart(rows: Sequence[dict[str, Any]], path: str) -> str:
    """Grouped bars (Fig. 5 style): a panel per setting, a group per eval set, a bar per encoder (mean over seeds),
    95 % CI whiskers."""
    from matplotlib.figure import Figure

    rows = pooled_rows(rows)
    sets = list(dict.fromkeys(r["eval"] for r in rows))
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    settings = list(dict.fromkeys((r["ways"], r["shots"]) for r in rows))
    fig = Figure(figsize=(5.0 * len(settings), 4.2), dpi=110)
    width = 0.8 / len(encoders)
    for p, (ways, shots) in enumerate(settings):
        ax = fig.add_subplot(1, len(settings), p + 1)
        for i, e in enumerate(encoders):
            found = {r["eval"]: r for r in rows if r["encoder"] == e and (r["ways"], r["shots"]) == (ways, shots)}
            xs = [j + (i - (len(encoders) - 1) / 2) * width for j, s in enumerate(sets) if s in found]
            ax.bar(xs, [found[s]["accuracy_mean"] for s in sets if s in found], width,
                   yerr=[found[s]["ci95"] for s in sets if s in found], capsize=2, color=f"C{i % 10}", label=e)
        ax.axhline(100.0 / ways, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xticks(range(len(sets)))
        ax.set_xticklabels(sets)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{ways}-way {shots}-shot (test classes)")
        ax.grid(True, axis="y", alpha=0.3)
        if p == 0:
            ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def read_curve(workdir: str, prefix: str = "fewshot/") -> dict[str, list[tuple[int, float]]]:
    """{set: [(step, accuracy %)]} of a stage's periodic few-shot rows (metrics.jsonl keys fewshot/<set>/<N>way<K>shot)."""
    path = os.path.join(workdir, "metrics.jsonl")
    out: dict[str, list[tuple[int, float]]] = {}
    if not os.path.isfile(path):
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            for k, v in row.items():
                if k.startswith(prefix) and not k.endswith("_ci95"):
                    out.setdefault(k.split("/")[1], []).append((int(row["step"]), float(v)))
    return out


def curves_chart(curves: Sequence[dict[str, Any]], path: str, *, ways: int = 5, shots: int = 1) -> str:
    """A panel per dev set with a line per tuned encoder over stage-2 steps (the mean over its seeds; thin lines:
    each seed) and the MAE's final value dashed; a last panel with the MAE's curves over pretraining steps."""
    from matplotlib.figure import Figure

    sets = list(dict.fromkeys(s for c in curves for s in c["points"]))
    mae = [c for c in curves if c["encoder"] == REFERENCE]
    panels = len(sets) + (1 if mae else 0)
    fig = Figure(figsize=(4.2 * max(panels, 1), 3.6), dpi=110)
    for p, s in enumerate(sets):
        ax = fig.add_subplot(1, panels, p + 1)
        tuned = [c for c in curves if c["encoder"] != REFERENCE and s in c["points"]]
        for i, name in enumerate(dict.fromkeys(c["encoder"] for c in tuned)):
            mine = [c["points"][s] for c in tuned if c["encoder"] == name]
            for pts in mine:
                ax.plot(*zip(*pts), color=f"C{i % 10}", linewidth=0.6, alpha=0.4)
            steps = sorted(set.intersection(*[{x for x, _ in pts} for pts in mine]))
            ax.plot(steps, [np.mean([dict(pts)[x] for pts in mine]) for x in steps], color=f"C{i % 10}",
                    marker="o", markersize=3, label=name)
        if mae and s in mae[0]["points"]:
            ax.axhline(mae[0]["points"][s][-1][1], color="k", linestyle="--", linewidth=0.8, label="MAE (end)")
        ax.axhline(100.0 / ways, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(f"{s}: dev classes, {ways}-way {shots}-shot")
        ax.set_xlabel("stage-2 step")
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, alpha=0.3)
        if p == 0:
            ax.legend(fontsize="x-small")
    if mae:
        ax = fig.add_subplot(1, panels, panels)
        for i, (s, pts) in enumerate(mae[0]["points"].items()):
            ax.plot(*zip(*pts), marker="o", markersize=3, color=f"C{i % 10}", label=s)
        ax.axhline(100.0 / ways, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title("MAE pretraining: dev classes")
        ax.set_xlabel("pretraining step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
