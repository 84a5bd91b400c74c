"""MAE-CT's NNCLR head (projector and predictor) in Flax Linen.

    projector: Dense(2048) → BN → ReLU → Dense(2048) → BN → ReLU → Dense(256) → BN(affine)
    predictor: Dense(4096) → BN → ReLU → Dense(256)

Every Dense has no bias and PyTorch's default init U(±1/√fan_in); every BatchNorm follows PyTorch's
`BatchNorm1d` defaults (eps 1e-5, momentum 0.1 ≡ Flax momentum 0.9, running variance updated with the unbiased
batch variance). In training the head normalises with batch statistics; with `axis_name` set (inside
`jax.shard_map`) those statistics cover the global per-view batch, as MAE-CT's SyncBatchNorm does.
"""
from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def torch_linear_init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    """PyTorch's default `nn.Linear` weight init for a Flax kernel [fan_in, fan_out]: U(−1/√fan_in, 1/√fan_in)."""
    bound = 1.0 / jnp.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class SyncBatchNorm(nn.Module):
    """PyTorch `BatchNorm1d` semantics on [B, C] inputs, statistics synced over `axis_name`.

    Training: y = (x − μ) / √(σ² + eps) · γ + β with μ, σ² the (biased) mean and variance over the global batch
    (B · axis size rows); running stats ← momentum · running + (1 − momentum) · (μ, σ² · n/(n−1)), n = global
    batch, as PyTorch does. Statistics and the normalisation run in float32; the output is cast to `dtype`.
    Variables: params `scale`, `bias` (when `affine`), batch_stats `mean`, `var` (float32).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    affine: bool = True
    axis_name: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
        chex.assert_rank(x, 2)
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        x32 = x.astype(jnp.float32)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            # The mesh axis does not exist during `init` outside shard_map, so sync only when applying.
            axis_name = None if self.is_initializing() else self.axis_name
            n = x.shape[0] * (jax.lax.axis_size(axis_name) if axis_name else 1)
            mean = x32.mean(axis=0)
            if axis_name:
                mean = jax.lax.pmean(mean, axis_name)
            # Two-pass variance: E[(x − μ)²] stays accurate where E[x²] − μ² would cancel.
            var = jnp.square(x32 - mean).mean(axis=0)
            if axis_name:
                var = jax.lax.pmean(var, axis_name)
            if not self.is_initializing():
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * unbiased
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
        if self.affine:
            y = y * self.param("scale", nn.initializers.ones, (features,), jnp.float32)
            y = y + self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        return y.astype(self.dtype)


def _dense(features: int, dtype: Dtype, name: str) -> nn.Dense:
    return nn.Dense(
        features, use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=torch_linear_init, name=name
    )


class Projector(nn.Module):
    """h [B, D] → z [B, proj_dim]: Dense → BN → ReLU → Dense → BN → ReLU → Dense → BN (MAE-CT's projector).

    Submodules: `linear0..2`, `bn0..2`. The output is float32 whatever `dtype` is.
    """

    proj_hidden_dim: int = 2048
    proj_dim: int = 256
    axis_name: str | None = None
    dtype: Dtype = jnp.float32
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    @nn.compact
    def __call__(self, h: jax.Array, *, train: bool = True) -> jax.Array:
        chex.assert_rank(h, 2)
        bn = lambda i: SyncBatchNorm(  # noqa: E731
            self.bn_momentum, self.bn_eps, axis_name=self.axis_name, dtype=self.dtype, name=f"bn{i}"
        )
        x = h.astype(self.dtype)
        x = nn.relu(bn(0)(_dense(self.proj_hidden_dim, self.dtype, "linear0")(x), use_running_average=not train))
        x = nn.relu(bn(1)(_dense(self.proj_hidden_dim, self.dtype, "linear1")(x), use_running_average=not train))
        x = bn(2)(_dense(self.proj_dim, self.dtype, "linear2")(x), use_running_average=not train)
        return x.astype(jnp.float32)


class Predictor(nn.Module):
    """z [B, proj_dim] → p [B, proj_dim]: Dense(pred_hidden_dim) → BN → ReLU → Dense(proj_dim) (MAE-CT's predictor).

    Submodules: `linear0`, `bn0`, `linear1`. The output is float32 whatever `dtype` is.
    """

    proj_dim: int = 256
    pred_hidden_dim: int = 4096
    axis_name: str | None = None
    dtype: Dtype = jnp.float32
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    @nn.compact
    def __call__(self, z: jax.Array, *, train: bool = True) -> jax.Array:
        chex.assert_rank(z, 2)
        x = _dense(self.pred_hidden_dim, self.dtype, "linear0")(z.astype(self.dtype))
        x = SyncBatchNorm(self.bn_momentum, self.bn_eps, axis_name=self.axis_name, dtype=self.dtype, name="bn0")(
            x, use_running_average=not train
        )
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
        self.projector = Projector(self.proj_hidden_dim, self.proj_dim, **common)
        self.predictor = Predictor(self.proj_dim, self.pred_hidden_dim, **common)

    def __call__(self, h: jax.Array, *, train: bool = True) -> tuple[jax.Array, jax.Array]:
        """h [B, D] → (projection [B, proj_dim], prediction [B, proj_dim]), float32."""
        chex.assert_rank(h, 2)
        z = self.projector(h, train=train)
        return z, self.predictor(z, train=train)

    def project(self, h: jax.Array, *, train: bool = True) -> jax.Array:
        """h [B, D] → projection [B, proj_dim] float32 (the projector only; touches no predictor variables)."""
        chex.assert_rank(h, 2)
        return self.projector(h, train=train)
