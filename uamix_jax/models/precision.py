"""The names of the compute dtypes and matmul precisions that configs may use (`config.dtype`, `config.precision`).

Compute dtype: activations and matmul inputs of the encoder and head; parameters, optimizer state, BatchNorm
statistics, softmax and losses stay float32 whatever it is (docs/method.md, "Precision"). float16 is left out: it would need
loss scaling, which nothing here does.

Matmul precision: the `jax.default_matmul_precision` value the loops trace under. 'default' lets the backend choose
(TPU: one bfloat16 pass; recent NVIDIA GPUs: TF32 for float32 arrays), 'high' three bfloat16 passes (TF32-like),
'highest' full float32, which every parity test uses.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp

DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PRECISIONS: tuple[str, ...] = ("default", "high", "highest")


def compute_dtype(name: str) -> Any:
    """The jnp dtype of a compute-dtype name in DTYPES ('float32' or 'bfloat16')."""
    if name not in DTYPES:
        raise ValueError(f"config.dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def check_precision(name: str) -> str:
    """`name` itself if it is one of PRECISIONS (a `jax.default_matmul_precision` value), else a ValueError."""
    if name not in PRECISIONS:
        raise ValueError(f"config.precision must be one of {PRECISIONS} (jax.default_matmul_precision), got {name!r}")
    return name
