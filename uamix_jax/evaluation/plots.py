"""The paper's Fig. 3: few-shot accuracy against the number of classes N, a line per K (and per encoder), as a PNG.

Drawn on a bare `matplotlib.figure.Figure` (Agg), never through pyplot, so it changes no global backend state and
works without a display.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_fewshot_curves(results: Sequence[dict[str, Any]], path: str | os.PathLike, *, title: str) -> str:
    """Writes accuracy (%) vs N with 95 % CI error bars to `path` (PNG); returns the path.

    `results`: dicts with 'label' (the encoder's name in the legend), 'ways', 'shots', 'accuracy_mean', 'ci95'.
    One line per (label, shots): the colour tells the encoder, the line style and marker the shot count.
    """
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("plot_fewshot_curves: no results to draw")
    labels = list(dict.fromkeys(r["label"] for r in results))
    shots = sorted({int(r["shots"]) for r in results})
    fig = Figure(figsize=(6.0, 4.2), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    for li, label in enumerate(labels):
        colour = f"C{li % 10}"
        for si, k in enumerate(shots):
            rows = sorted((r for r in results if r["label"] == label and int(r["shots"]) == k),
                          key=lambda r: r["ways"])
            if not rows:
                continue
            name = f"{label}, {k}-shot" if len(labels) > 1 else f"{k}-shot"
            ax.errorbar([r["ways"] for r in rows], [r["accuracy_mean"] for r in rows],
                        yerr=[r["ci95"] for r in rows], color=colour, linestyle=_LINESTYLES[si % len(_LINESTYLES)],
                        marker=_MARKERS[si % len(_MARKERS)], capsize=3, label=name)
    ways = sorted({int(r["ways"]) for r in results})
    ax.set_xticks(ways)
    ax.set_xlabel("N (classes per episode)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return path
