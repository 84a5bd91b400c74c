"""glibc malloc settings for long CPU runs, shared by the benchmarks (`--malloc-tuning`).

XLA:CPU frees its per-call temp buffer (gigabytes in a ViT-B training step) and YNNPACK's scratch after every call;
by default glibc hands such blocks back to the kernel (mmap / trim), so every call page-faults them in again: 1.5M
minor faults and ~20% of a stage-2 step on 2 cores. One arena (XLA's worker threads would otherwise allocate from
per-thread arenas, whose big blocks always go to mmap), no mmap below 4 GiB, and no trimming remove the faults.
glibc reads these variables only at process start, hence the re-exec.
"""
from __future__ import annotations

import os
import sys

MALLOC_TUNING = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "4294967296",
                 "MALLOC_TRIM_THRESHOLD_": "17179869184", "MALLOC_TOP_PAD_": "536870912"}


def is_tuned() -> bool:
    return all(os.environ.get(k) == v for k, v in MALLOC_TUNING.items())


def reexec_with_malloc_tuning(script: str, argv: list[str]) -> None:
    """Replaces this process by `python script argv...` with MALLOC_TUNING in its environment (no-op if set)."""
    if not is_tuned():
        os.execve(sys.executable, [sys.executable, os.path.abspath(script), *argv], {**os.environ, **MALLOC_TUNING})
