"""Data parallelism: the 1-D device mesh, how steps run over it, and how host arrays become global arrays.

Every training step is per-device code over the mesh axis `AXIS` ('data'): state and key replicated, batch rows split
over the axis, run as `jax.jit(jax.shard_map(step, ...))` (what `jax.pmap` is built on since JAX 0.8). Evaluation
passes use the same mesh over the local devices (`data_mesh(jax.local_devices())`), training over all of them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def data_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """The 1-D mesh (AXIS,) over the given devices (default: all of them, in jax.devices() order)."""
    return Mesh(np.asarray(jax.devices() if devices is None else list(devices)), (AXIS,))


def shard_step(step: Callable, mesh: Mesh, *, donate: bool = True) -> Callable:
    """jit(shard_map(step)) for step(state, batch, key): state and key replicated, batch rows split over AXIS,
    the state donated."""
    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS), P()), out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=(0,) if donate else ())


def device_varying(tree: Any) -> Any:
    """`tree`, replicated over AXIS inside a step, marked as varying per device, at its own dtype.

    Differentiating a per-device loss with respect to replicated parameters makes shard_map insert the gradient's
    psum where the replicated value first meets device-varying data. Under a bfloat16 compute dtype that is after the
    model has cast its float32 parameters, so the devices' gradients would be summed in bfloat16 (seen in XLA:TPU's
    HLO). Marking the parameters varying first (`jax.lax.pcast(..., to="varying")`, whose transpose is that psum) puts
    the sum on the float32 gradients, as data-parallel mixed precision does elsewhere.
    """
    return jax.lax.pcast(tree, AXIS, to="varying")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over AXIS."""
    return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same value on every device of the mesh."""
    return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's local rows into global arrays sharded on their leading axis."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Host values (the same on every process) → global arrays replicated over the mesh (multi-host safe)."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def host_copy(tree: Any) -> Any:
    """A replicated (possibly multi-host) array tree as numpy on this host."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)
