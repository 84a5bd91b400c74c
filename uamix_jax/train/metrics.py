"""Metrics: one JSON line per logged step in `<workdir>/metrics.jsonl` and TensorBoard scalars in
`<workdir>/tensorboard/` (tensorboardX's `SummaryWriter`), written by process 0 only. The JSONL is appended and
flushed at every write, so a crash loses nothing logged there. On resume, JSONL lines for steps after the restored
one are dropped, so a resumed run's file equals an uninterrupted run's; the TensorBoard writer opens a new event
file that starts with a purge marker (`purge_step`, a SessionLog START) at the next step, so TensorBoard drops the
old events from there on in the same way.

TensorBoard durability: tensorboardX hands events to a writer thread, which flushes its file every `flush_secs`
(2 s here) and whenever `write` asks; so a killed process loses at most the TensorBoard events of its last couple of
seconds (the JSONL keeps them; a resume purges those steps anyway), and `close` writes everything.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import jax
from absl import logging


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
        # Imported here: tensorboardX imports torch when it is installed, and importing the trainer should not.
        from tensorboardX import SummaryWriter

        # tensorboardX names files by the second and host only; the ns clock and pid keep two writers started in
        # the same second apart (a fast resume) and in start order, as TensorBoard reads a run's files by name.
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=purge, flush_secs=2,
                                 filename_suffix=f".{time.time_ns()}.{os.getpid()}")

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.active:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        if self._tb is not None:
            wall_time = time.time()
            for tag, value in row.items():
                if tag != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(tag, float(value), int(step), walltime=wall_time)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


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
