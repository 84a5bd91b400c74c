"""AudioMAE's ViT encoder in Flax Linen, parameter-compatible with AudioMAE's PyTorch checkpoints.

Input: normalised log-mel fbank x [B, T, F] (T = target_length frames, F = num_mel_bins). Pipeline
(docs/method.md, "The encoder"):

    patches  = conv16x16/16(x)                      [B, (T/16)(F/16), D]   token n = (F/16) t + f
    z_0      = [cls ; patches + P[1:]]              [B, 1 + (T/16)(F/16), D]   (P = fixed table, P[0] = 0)
    z_l      = z_{l-1} + MHSA(LN1(z_{l-1}));  z_l += MLP(LN2(z_l))        (pre-norm, l = 1..depth)
    pooling='norm_mean' (pretrained):  tokens = LN(z_L),  embedding = mean(tokens[:, 1:])
    pooling='fc_norm'   (fine-tuned):  tokens = z_L,      embedding = fc_norm(mean(z_L[:, 1:]))

Parameter names mirror AudioMAE's state-dict names (`patch_embed/proj`, `cls_token`, `blocks_{i}/{norm1,attn/qkv,
attn/proj,norm2,mlp/fc1,mlp/fc2}`, `norm` or `fc_norm`); the trainer's freeze and lr regexes rely on them. Blocks
are separate modules (no scan) so each can be frozen or given its own learning rate. The positional table is a
constant, not a variable.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uamix_jax.models.posemb import POSEMB_POLICIES, positional_table
from uamix_jax.models.precision import compute_dtype

# name -> (width, depth, num_heads, mlp_dim)
VIT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "test": (32, 4, 2, 64),
    "mini": (192, 4, 3, 768),  # ViT-Ti width, 4 blocks: the CPU pretraining and replication runs
    "tiny": (192, 12, 3, 768),
    "small": (384, 12, 6, 1536),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
}
POOLINGS = ("norm_mean", "fc_norm")
LN_EPS = 1e-6  # AudioMAE: partial(nn.LayerNorm, eps=1e-6) everywhere

Dtype = Any
_xavier = nn.initializers.xavier_uniform()


def _flat_xavier_uniform(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    """xavier_uniform on the kernel viewed as [prod(shape[:-1]), shape[-1]].

    MAE initialises the patch conv "like a linear" (xavier on weight.view(D, -1)): fan_out is D, not D·16·16 as a
    conv-style xavier would count.
    """
    return _xavier(key, (math.prod(shape[:-1]), shape[-1]), dtype).reshape(shape)


def _layer_norm(name: str, dtype: Dtype) -> nn.LayerNorm:
    # Two-pass variance (use_fast_variance=False) keeps float32 parity with torch's LayerNorm on large activations.
    return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, name=name)


def _dense(features: int, name: str, dtype: Dtype) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=_xavier,
                    bias_init=nn.initializers.zeros, name=name)


class PatchProj(nn.Module):
    """The 16×16 stride-16 patch conv (`patch_embed.proj`) computed as patchify + one matmul.

    Kernel [p, p, 1, D] (HWIO, same as a Flax Conv) and bias [D]; x [B, T, F] → [B, (T/p)(F/p), D], tokens in
    row-major (time, frequency) order like torch's flatten(2). A non-overlapping conv with one input channel is
    exactly this matmul, and XLA:CPU runs the [B·n, p²] × [p², D] dot far faster than a strided convolution.
    """

    width: int
    patch_size: int = 16
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.patch_size
        b, t, f = x.shape
        kernel = self.param("kernel", _flat_xavier_uniform, (p, p, 1, self.width), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.width,), jnp.float32)
        patches = x.reshape(b, t // p, p, f // p, p).transpose(0, 1, 3, 2, 4).reshape(b, (t // p) * (f // p), p * p)
        y = jnp.dot(patches.astype(self.dtype), kernel.reshape(p * p, self.width).astype(self.dtype))
        return y + bias.astype(self.dtype)


class PatchEmbed(nn.Module):
    """Holds `proj` so the parameter path is `patch_embed/proj/{kernel,bias}`, as in AudioMAE."""

    width: int
    patch_size: int = 16
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return PatchProj(self.width, self.patch_size, self.dtype, name="proj")(x)


ATTENTION_IMPLEMENTATIONS = ("auto", "einsum", "xla", "cudnn")
_HALF_DTYPES = (jnp.bfloat16, jnp.float16)


def resolve_attention(attention: str, dtype: Dtype, head_dim: int, tokens: int, backend: str | None = None) -> str:
    """The attention path `attention` names. 'auto' → 'cudnn' on a GPU backend (`backend`, default JAX's) with a
    bf16/fp16 compute dtype, a head width cuDNN's fused kernel takes (a multiple of 8, at most 128) and an even token
    count, else 'einsum'. cuDNN has no float32 path, and its fused kernel refuses to train on an odd sequence: an
    AudioMAE ViT-B stage-2 step (1 + 512 tokens) on an H200 under JAX 0.11.2 stopped with "Unsupported sequence length
    Q 513, KV 513". AudioMAE's token counts (1 + T/2) are always odd, so 'auto' takes the einsum path for them.
    """
    if attention not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"AudioMAEEncoder.attention (config.model.attention) must be one of "
                         f"{ATTENTION_IMPLEMENTATIONS}, got {attention!r}")
    half = jnp.dtype(dtype) in tuple(jnp.dtype(d) for d in _HALF_DTYPES)
    if attention == "auto":
        fits = head_dim % 8 == 0 and head_dim <= 128 and tokens % 2 == 0
        return "cudnn" if (backend or jax.default_backend()) == "gpu" and half and fits else "einsum"
    if attention == "cudnn" and not half:
        raise ValueError(f"attention='cudnn' needs a bfloat16 or float16 compute dtype (cuDNN's fused attention "
                         f"has no float32 path), got {jnp.dtype(dtype).name}; use 'auto', 'xla' or 'einsum'")
    return attention


class Attention(nn.Module):
    """timm's fused-qkv multi-head self-attention: softmax(q kᵀ / √d_h) v per head, then `proj`.

    x [B, N, D] → [B, N, D]. `qkv` output channel o = s·D + h·d_h + d with s ∈ {q, k, v} (timm's reshape to
    (B, N, 3, H, d_h)), so a converted AudioMAE kernel splits exactly like the torch model. Logits, exponentials
    and the softmax denominator are float32 in every compute dtype. `attention` picks the path (same parameters,
    same maths): 'einsum' (written here; fastest on CPU), 'xla' or 'cudnn' (`jax.nn.dot_product_attention` with
    that implementation; cuDNN's fused kernel needs bf16/fp16), 'auto' (`resolve_attention`).
    """

    width: int
    num_heads: int
    dtype: Dtype = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        head_dim = d // self.num_heads
        implementation = resolve_attention(self.attention, self.dtype, head_dim, n)
        qkv = _dense(3 * d, "qkv", self.dtype)(x).reshape(b, n, 3, self.num_heads, head_dim)
        if implementation != "einsum":
            out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], scale=head_dim**-0.5,
                                               implementation=implementation)  # [B, N, H, d_h]
            return _dense(d, "proj", self.dtype)(out.astype(self.dtype).reshape(b, n, d))
        # Scaling q (N·D values) instead of the logits (H·N² values) is the same product, done where it is cheaper.
        q = qkv[:, :, 0] * jnp.asarray(head_dim**-0.5, qkv.dtype)
        k, v = qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        # softmax(l) v = (exp(l - max l) v) / Σ exp(l - max l): dividing the [.., N, d_h] result instead of the
        # [.., N, N] weights saves a full pass over the largest tensor of the block (≈10% of the block on CPU).
        # The max carries no gradient (it cancels), as in jax.nn.softmax.
        unnormalised = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
        denominator = unnormalised.sum(axis=-1)[..., None]  # [B, H, N, 1], float32
        out = jnp.einsum("bhqk,bkhd->bhqd", unnormalised.astype(self.dtype), v, preferred_element_type=jnp.float32)
        out = (out / denominator).astype(self.dtype).transpose(0, 2, 1, 3).reshape(b, n, d)
        return _dense(d, "proj", self.dtype)(out)


class Mlp(nn.Module):
    """fc1 → exact (erf) GELU → fc2, as timm's Mlp with nn.GELU. [B, N, D] → [B, N, D]."""

    width: int
    mlp_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.gelu(_dense(self.mlp_dim, "fc1", self.dtype)(x), approximate=False)
        return _dense(self.width, "fc2", self.dtype)(h)


class Block(nn.Module):
    """Pre-norm ViT block: x += DropPath(Attn(LN1 x)); x += DropPath(MLP(LN2 x)). [B, N, D] → [B, N, D].

    `train` is a field (not a call argument) so the block can be wrapped in `nn.remat` without static arguments.
    Drop-path draws one keep/drop per sample from the 'dropout' rng stream, as timm's DropPath does.
    """

    width: int
    num_heads: int
    mlp_dim: int
    drop_path_rate: float = 0.0
    train: bool = False
    dtype: Dtype = jnp.float32
    attention: str = "auto"

    def _drop_path(self, y: jax.Array) -> jax.Array:
        if not self.train or self.drop_path_rate == 0.0:
            return y
        keep = 1.0 - self.drop_path_rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (y.shape[0],) + (1,) * (y.ndim - 1))
        return jnp.where(mask, y / jnp.asarray(keep, y.dtype), jnp.zeros((), y.dtype))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        attn = Attention(self.width, self.num_heads, self.dtype, self.attention, name="attn")
        y = attn(_layer_norm("norm1", self.dtype)(x))
        x = x + self._drop_path(y)
        y = Mlp(self.width, self.mlp_dim, self.dtype, name="mlp")(_layer_norm("norm2", self.dtype)(x))
        return x + self._drop_path(y)


# Recomputes each block's activations in the backward pass (train-time memory for compute).
_RematBlock = nn.remat(Block)


class AudioMAEEncoder(nn.Module):
    """AudioMAE ViT encoder: fbank [B, T, F] → (tokens [B, 1 + (T/p)(F/p), D], embedding [B, D]), float32 outputs.

    See the module docstring for the equations. `dtype` is the compute dtype (parameters are always float32; in
    bfloat16 LayerNorm statistics and softmax run in float32). `posemb` picks the positional-table policy for
    T ≠ 1024 (`uamix_jax.models.posemb`). `remat` recomputes each block in the backward pass to save memory;
    `drop_path_rate` is the last block's stochastic-depth rate (linear from 0, timm's schedule), active only with
    `train=True` and a 'dropout' rng.
    """

    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    patch_size: int = 16
    num_mel_bins: int = 128
    target_length: int = 1024
    pooling: str = "norm_mean"
    posemb: str = "prefix"
    dtype: Dtype = jnp.float32
    remat: bool = False
    drop_path_rate: float = 0.0
    attention: str = "auto"  # 'auto' | 'einsum' | 'xla' | 'cudnn' (Attention; `resolve_attention`)

    @classmethod
    def from_size(cls, name: str, **overrides: Any) -> "AudioMAEEncoder":
        """The encoder of a named size in `VIT_SIZES` ('test', 'mini', 'tiny', 'small', 'base', 'large'), fields overridable."""
        if name not in VIT_SIZES:
            raise ValueError(f"unknown ViT size {name!r}; choose one of {sorted(VIT_SIZES)}")
        width, depth, num_heads, mlp_dim = VIT_SIZES[name]
        fields = dict(width=width, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim)
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_config(cls, model: Mapping[str, Any], *, dtype: Dtype = jnp.float32, **overrides: Any) -> "AudioMAEEncoder":
        """The encoder a config's `model` block describes (size, target_length, pooling, posemb, remat, attention,
        drop_path), at compute dtype `dtype` (a jnp dtype or 'float32' / 'bfloat16'); fields overridable. Every task
        and command builds its encoder here."""
        fields = dict(target_length=model["target_length"], pooling=model.get("pooling", "norm_mean"),
                      posemb=model.get("posemb", "prefix") or "prefix", remat=model.get("remat", False),
                      attention=model.get("attention", "auto"), drop_path_rate=model.get("drop_path", 0.0),
                      dtype=compute_dtype(dtype) if isinstance(dtype, str) else dtype)
        fields.update(overrides)
        return cls.from_size(model["size"], **fields)

    @property
    def num_patches(self) -> int:
        return (self.target_length // self.patch_size) * (self.num_mel_bins // self.patch_size)

    def _check_config(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"AudioMAEEncoder.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.posemb not in POSEMB_POLICIES:
            raise ValueError(f"AudioMAEEncoder.posemb must be one of {POSEMB_POLICIES}, got {self.posemb!r}")
        if self.width % self.num_heads:
            raise ValueError(f"AudioMAEEncoder.width={self.width} is not divisible by num_heads={self.num_heads}")
        for name in ("target_length", "num_mel_bins"):
            value = getattr(self, name)
            if value <= 0 or value % self.patch_size:
                raise ValueError(f"AudioMAEEncoder.{name}={value} must be a positive multiple of "
                                 f"patch_size={self.patch_size}")

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, keep: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """`keep` [B, n] int32: run on these patch tokens only (after the positional table is added), as MAE
        pretraining and AudioMAE's fine-tuning masks do; the tokens come out in `keep`'s order, cls first."""
        self._check_config()
        chex.assert_rank(x, 3, custom_message=(
            f"AudioMAEEncoder expects fbank [batch, time, mel] = [B, {self.target_length}, {self.num_mel_bins}]"))
        chex.assert_type(x, jnp.floating)
        chex.assert_shape(x, (None, self.target_length, self.num_mel_bins), custom_message=(
            f"AudioMAEEncoder got input of shape {tuple(x.shape)} but was built for [B, target_length="
            f"{self.target_length}, num_mel_bins={self.num_mel_bins}]; pad or crop the fbank to "
            f"{self.target_length} frames (uamix_jax.pad_or_crop_frames) or build the encoder with "
            f"target_length={x.shape[1]}"))

        tokens = PatchEmbed(self.width, self.patch_size, self.dtype, name="patch_embed")(x)
        table = positional_table(self.width, self.target_length, num_mel_bins=self.num_mel_bins,
                                 patch_size=self.patch_size, policy=self.posemb)
        tokens = tokens + jnp.asarray(table[1:], self.dtype)
        if keep is not None:
            chex.assert_rank(keep, 2)
            chex.assert_type(keep, jnp.integer)
            chex.assert_equal(keep.shape[0], x.shape[0])
            tokens = jnp.take_along_axis(tokens, keep[:, :, None], axis=1)
        cls = self.param("cls_token", nn.initializers.normal(stddev=0.02), (1, 1, self.width), jnp.float32)
        # The cls row of the table is zero, so cls enters as is.
        cls = jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, self.width))
        z = jnp.concatenate([cls, tokens], axis=1)

        block_cls: Callable[..., nn.Module] = _RematBlock if self.remat else Block
        rates = np.linspace(0.0, self.drop_path_rate, self.depth)
        for i in range(self.depth):
            z = block_cls(self.width, self.num_heads, self.mlp_dim, drop_path_rate=float(rates[i]), train=train,
                          dtype=self.dtype, attention=self.attention, name=f"blocks_{i}")(z)

        if self.pooling == "norm_mean":
            z = _layer_norm("norm", self.dtype)(z)
            embedding = jnp.mean(z[:, 1:].astype(jnp.float32), axis=1)
        else:
            pooled = jnp.mean(z[:, 1:].astype(jnp.float32), axis=1)
            embedding = _layer_norm("fc_norm", jnp.float32)(pooled)
        return z.astype(jnp.float32), embedding.astype(jnp.float32)


def make_encoder(size: str, **overrides: Any) -> AudioMAEEncoder:
    """`AudioMAEEncoder.from_size(size, **overrides)`."""
    return AudioMAEEncoder.from_size(size, **overrides)
