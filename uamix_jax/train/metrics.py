"""Metrics: one JSON line per logged step in `<workdir>/metrics.jsonl` and TensorBoard scalars in
`<workdir>/tensorboard/`, written by process 0 only and flushed at every write (a crash loses nothing logged). On
resume, JSONL lines for steps after the restored one are dropped, so a resumed run's file equals an uninterrupted
run's; the TensorBoard writer starts with a purge marker at the next step, so TensorBoard drops the old events from
there on in the same way.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
from absl import logging

from uamix_jax.train.tensorboard import ScalarEventWriter


def _plain(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no nan/inf; keep them readable
    return value


class MetricWriter:
    """JSONL + TensorBoard metric sink; a no-op on processes other than 0."""

    def __init__(self, workdir: str, *, resume_step: int | None = None, filename: str = "metrics.jsonl"):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, filename)
        self._tb = None
        if not self.active:
            return
        os.makedirs(workdir, exist_ok=True)
        if resume_step is not None:
            truncate_after(self.path, resume_step)
        purge = None if resume_step is None else resume_step + 1
        self._tb = ScalarEventWriter(os.path.join(workdir, "tensorboard"), purge_step=purge)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.active:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        if self._tb is not None:
            self._tb.scalars(int(step), {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))})

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def truncate_after(path: str, step: int) -> int:
    """Drops the lines of a metrics JSONL whose step is > `step`; returns how many were dropped."""
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", -1) <= step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut by a crash mid-write
            continue
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)
    dropped = len(lines) - len(kept)
    if dropped:
        logging.info("resume at step %d: dropped %d metric lines written after it from %s", step, dropped, path)
    return dropped


def read_metrics(path: str) -> list[dict[str, Any]]:
    """All rows of a metrics JSONL file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
