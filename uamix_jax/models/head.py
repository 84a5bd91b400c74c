"""MAE-CT's NNCLR head (projector and predictor) in Flax Linen.

    projector: Dense(2048) → BN → ReLU → Dense(2048) → BN → ReLU → Dense(256) → BN(affine)
    predictor: Dense(4096) → BN → ReLU → Dense(256)

Every Dense has no bias and PyTorch's default `nn.Linear` init, kaiming_uniform(a=√5) = U(±1/√fan_in), written as
the Flax initializer `variance_scaling(1/3, 'fan_in', 'uniform')` (limit √(3 · scale / fan_in) = 1/√fan_in).
Every BatchNorm is `flax.linen.BatchNorm` with PyTorch's `BatchNorm1d` numbers (eps 1e-5, momentum 0.1 ≡ Flax
momentum 0.9) and the two-pass variance E[(x − μ)²] (`use_fast_variance=False`). In training the head normalises
with batch statistics; with `axis_name` set (inside `jax.shard_map`) those statistics cover the global per-view
batch, as MAE-CT's SyncBatchNorm does. Variables per BN: params `scale`, `bias`; batch_stats `mean`, `var`.

Running variance: Flax keeps the EMA of the *biased* batch variance σ², PyTorch the EMA of the unbiased one
σ² · n/(n − 1) (n = global batch). Training is unaffected (both normalise with σ²); only eval-mode outputs of a head
read the running variance. Exporting a head to PyTorch (the interop export, `--head`) therefore writes
running_var = var · n/(n − 1), with n the global batch the head was trained with. That is exact for the batch-variance
terms and scales the initial value 1's residual momentum^steps share too, which is negligible after a few hundred
steps (0.9^100 < 3e-5).
"""
from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# PyTorch's `nn.Linear` default weight init for a Flax kernel [fan_in, fan_out]: U(−1/√fan_in, 1/√fan_in).
torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def batch_norm(*, momentum: float, epsilon: float, axis_name: str | None, dtype: Dtype, name: str) -> nn.BatchNorm:
    """PyTorch `BatchNorm1d` numbers on a Flax BatchNorm: statistics (and the output before the cast to `dtype`) in
    float32, parameters and running statistics float32, statistics synced over `axis_name` when applied."""
    return nn.BatchNorm(momentum=momentum, epsilon=epsilon, axis_name=axis_name, use_fast_variance=False,
                        dtype=dtype, param_dtype=jnp.float32, name=name)


def _dense(features: int, dtype: Dtype, name: str) -> nn.Dense:
    return nn.Dense(
        features, use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=torch_linear_init, name=name
    )


class _BatchNormMLP(nn.Module):
    """The fields the projector and predictor share: the BatchNorm sync axis, compute dtype and BN numbers."""

    axis_name: str | None = None
    dtype: Dtype = jnp.float32
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    def _bn(self, name: str) -> nn.BatchNorm:
        return batch_norm(momentum=self.bn_momentum, epsilon=self.bn_eps, axis_name=self.axis_name, dtype=self.dtype,
                          name=name)


class Projector(_BatchNormMLP):
    """h [B, D] → z [B, proj_dim]: Dense → BN → ReLU → Dense → BN → ReLU → Dense → BN (MAE-CT's projector).

    Submodules: `linear0..2`, `bn0..2`. The output is float32 whatever `dtype` is.
    """

    proj_hidden_dim: int = 2048
    proj_dim: int = 256

    @nn.compact
    def __call__(self, h: jax.Array, *, train: bool = True) -> jax.Array:
        chex.assert_rank(h, 2)
        bn = lambda i: self._bn(f"bn{i}")  # noqa: E731
        x = h.astype(self.dtype)
        x = nn.relu(bn(0)(_dense(self.proj_hidden_dim, self.dtype, "linear0")(x), use_running_average=not train))
        x = nn.relu(bn(1)(_dense(self.proj_hidden_dim, self.dtype, "linear1")(x), use_running_average=not train))
        x = bn(2)(_dense(self.proj_dim, self.dtype, "linear2")(x), use_running_average=not train)
        return x.astype(jnp.float32)


class Predictor(_BatchNormMLP):
    """z [B, proj_dim] → p [B, proj_dim]: Dense(pred_hidden_dim) → BN → ReLU → Dense(proj_dim) (MAE-CT's predictor).

    Submodules: `linear0`, `bn0`, `linear1`. The output is float32 whatever `dtype` is.
    """

    proj_dim: int = 256
    pred_hidden_dim: int = 4096

    @nn.compact
    def __call__(self, z: jax.Array, *, train: bool = True) -> jax.Array:
        chex.assert_rank(z, 2)
        x = _dense(self.pred_hidden_dim, self.dtype, "linear0")(z.astype(self.dtype))
        x = self._bn("bn0")(x, use_running_average=not train)
        x = _dense(self.proj_dim, self.dtype, "linear1")(nn.relu(x))
        return x.astype(jnp.float32)


class NNCLRHead(nn.Module):
    """The NNCLR head: `(projection, prediction) = (projector(h), predictor(projector(h)))`, both [B, proj_dim] float32.

    `project(h)` runs the projector alone; applied with EMA parameters it is stage 2's target projector:

        head.apply({'params': {'projector': ema_params}, 'batch_stats': {'projector': ema_stats}},
                   h, method=NNCLRHead.project, mutable=['batch_stats'])

    With `axis_name` set (inside `jax.shard_map`) BatchNorm statistics cover the global batch. Call it once per
    view: MAE-CT computes BatchNorm statistics per view.
    """

    proj_hidden_dim: int = 2048
    proj_dim: int = 256
    pred_hidden_dim: int = 4096
    axis_name: str | None = None
    dtype: Dtype = jnp.float32
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    def setup(self) -> None:
        common = dict(axis_name=self.axis_name, dtype=self.dtype, bn_momentum=self.bn_momentum, bn_eps=self.bn_eps)
        self.projector = Projector(proj_hidden_dim=self.proj_hidden_dim, proj_dim=self.proj_dim, **common)
        self.predictor = Predictor(proj_dim=self.proj_dim, pred_hidden_dim=self.pred_hidden_dim, **common)

    def __call__(self, h: jax.Array, *, train: bool = True) -> tuple[jax.Array, jax.Array]:
        """h [B, D] → (projection [B, proj_dim], prediction [B, proj_dim]), float32."""
        chex.assert_rank(h, 2)
        z = self.projector(h, train=train)
        return z, self.predictor(z, train=train)

    def project(self, h: jax.Array, *, train: bool = True) -> jax.Array:
        """h [B, D] → projection [B, proj_dim] float32 (the projector only; touches no predictor variables)."""
        chex.assert_rank(h, 2)
        return self.projector(h, train=train)
