"""AudioMAE's masked-autoencoder pieces: patchify, unstructured random masking and the plain decoder (decoder_mode=0).

Pretraining (AudioMAE's `MaskedAutoencoderViT.forward`, docs/method.md, "MAE pretraining"):

    target   = patchify(x)                                [B, N, p²]    x: normalised fbank [B, T, F]
    keep     = first int(N (1 − r)) of argsort(noise)     [B, n_keep]   noise ~ U(0, 1)^N per clip, r = 0.8
    tokens   = encoder(x, keep=keep)                      [B, 1 + n_keep, D]  (cls first, after `norm`)
    pred     = MAEDecoder(tokens, keep)                   [B, N, p²]
    loss     = mae_loss(pred, target, mask)               (uamix_jax.objectives.mae)

Patch convention (AudioMAE's `patchify` on the [B, 1, T, F] image with time as H: reshape to (B, 1, T/p, p, F/p, p),
einsum 'nchpwq->nhwpqc'): token n = (F/p)·t + f, the encoder's token order; patch pixel j = p·a + b holds
x[p·t + a, p·f + b] (time offset a major, frequency offset b minor). The patch conv of `uamix_jax.models.vit`
flattens its patches the same way, so patchify(x) @ kernel.reshape(p², D) + bias is exactly its output.

Decoder parameter names are AudioMAE's (`decoder_embed`, `mask_token`, `decoder_blocks_{i}` with the encoder's block
names inside, `decoder_norm`, `decoder_pred`); `decoder_pos_embed` is the fixed sin-cos table built like the
encoder's (a constant, not a parameter), so a trained model maps 1:1 onto AudioMAE's `pretrained.pth` keys
(`uamix_jax.interop.mae_keys`).
"""
from __future__ import annotations

from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from uamix_jax.models.posemb import positional_table
from uamix_jax.models.vit import Block, _RematBlock, _dense, _layer_norm

MASK_RATIO = 0.8  # AudioMAE's pretraining mask ratio (unstructured)
# AudioMAE's plain decoder for ViT-B (`mae_vit_base_patch16`: decoder_embed_dim 512, depth 8, 16 heads, mlp 4x)
AUDIOMAE_DECODER = dict(width=512, depth=8, num_heads=16, mlp_dim=2048)

Dtype = Any


def num_keep(num_patches: int, mask_ratio: float = MASK_RATIO) -> int:
    """Visible tokens per clip: int(N·(1 − r)), AudioMAE's `len_keep` (float rounding included: N = 512 → 102)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
    keep = int(num_patches * (1 - mask_ratio))
    if keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio} keeps no token of {num_patches}; lower it or use longer inputs")
    return keep


def patchify(x: jax.Array, patch_size: int = 16) -> jax.Array:
    """fbank x [B, T, F] → patches [B, (T/p)(F/p), p²] in the encoder's token order (module docstring)."""
    chex.assert_rank(x, 3)
    b, t, f = x.shape
    p = patch_size
    if t % p or f % p:
        raise ValueError(f"patchify: input [B, T={t}, F={f}] must have T and F divisible by the patch size {p}")
    return x.reshape(b, t // p, p, f // p, p).transpose(0, 1, 3, 2, 4).reshape(b, (t // p) * (f // p), p * p)


def unpatchify(patches: jax.Array, target_length: int, patch_size: int = 16) -> jax.Array:
    """Inverse of `patchify`: [B, N, p²] → [B, T, N·p/T] (for looking at reconstructions)."""
    chex.assert_rank(patches, 3)
    b, n, _ = patches.shape
    p = patch_size
    n_time = target_length // p
    n_freq = n // n_time
    return patches.reshape(b, n_time, n_freq, p, p).transpose(0, 1, 3, 2, 4).reshape(b, target_length, n_freq * p)


def random_masking(
    key: jax.Array, sample_index: jax.Array, num_patches: int, keep: int
) -> tuple[jax.Array, jax.Array]:
    """AudioMAE's unstructured masking, one independent draw per clip: (keep_idx [B, keep] int32, mask [B, N]).

    Clip b's noise is U(0, 1)^N from fold_in(key, sample_index[b]); keep_idx = the first `keep` entries of
    argsort(noise) (in that random order, as AudioMAE keeps them); mask = 1 for the hidden tokens, 0 for the kept
    ones (float32). Keyed by the clip's index in the global batch, so the masks do not depend on the device count.
    `num_patches` and `keep` are static.
    """
    chex.assert_rank(sample_index, 1)
    chex.assert_type(sample_index, int)
    if not 0 < keep <= num_patches:
        raise ValueError(f"random_masking: keep={keep} must lie in [1, num_patches={num_patches}]")

    def order(index: jax.Array) -> jax.Array:
        noise = jax.random.uniform(jax.random.fold_in(key, index), (num_patches,))
        return jnp.argsort(noise)[:keep].astype(jnp.int32)

    keep_idx = jax.vmap(order)(sample_index)
    rows = jnp.arange(sample_index.shape[0])[:, None]
    mask = jnp.ones((sample_index.shape[0], num_patches), jnp.float32).at[rows, keep_idx].set(0.0)
    return keep_idx, mask


class MAEDecoder(nn.Module):
    """AudioMAE's plain Transformer decoder: encoder tokens of the visible patches → predicted patches [B, N, p²].

    tokens [B, 1 + n_keep, D] (cls first, the encoder's output after `norm`) and keep [B, n_keep] (their patch
    indices, as given to the encoder):

        y      = decoder_embed(tokens)                                      [B, 1 + n_keep, Dd]
        grid   = mask_token everywhere, y[:, 1:] scattered to rows keep      [B, N, Dd]
        z      = [y[:, :1] ; grid] + decoder_pos_embed                      [B, 1 + N, Dd]
        z      = decoder_norm(decoder_blocks(z))
        pred   = decoder_pred(z)[:, 1:]                                     [B, N, p²]

    AudioMAE un-shuffles by appending mask tokens and gathering with `ids_restore`; scattering into a mask-token grid
    is the same map and needs only `keep`. `posemb` and the input geometry must be the encoder's, so both tables
    come from the same grid (`uamix_jax.models.posemb`). Output is float32.
    """

    width: int = AUDIOMAE_DECODER["width"]
    depth: int = AUDIOMAE_DECODER["depth"]
    num_heads: int = AUDIOMAE_DECODER["num_heads"]
    mlp_dim: int = AUDIOMAE_DECODER["mlp_dim"]
    patch_size: int = 16
    num_mel_bins: int = 128
    target_length: int = 1024
    posemb: str = "prefix"
    dtype: Dtype = jnp.float32
    remat: bool = False
    attention: str = "auto"

    @property
    def num_patches(self) -> int:
        return (self.target_length // self.patch_size) * (self.num_mel_bins // self.patch_size)

    @nn.compact
    def __call__(self, tokens: jax.Array, keep: jax.Array) -> jax.Array:
        chex.assert_rank([tokens, keep], [3, 2])
        chex.assert_type(keep, int)
        b, n_tok, _ = tokens.shape
        chex.assert_shape(keep, (b, n_tok - 1), custom_message=(
            f"MAEDecoder: keep must be [B, n_keep] with tokens [B, 1 + n_keep, D] (cls first), got keep "
            f"{tuple(keep.shape)} and tokens {tuple(tokens.shape)}"))
        if self.width % self.num_heads:
            raise ValueError(f"MAEDecoder.width={self.width} is not divisible by num_heads={self.num_heads}")
        n = self.num_patches

        y = _dense(self.width, "decoder_embed", self.dtype)(tokens.astype(self.dtype))
        mask_token = self.param("mask_token", nn.initializers.normal(stddev=0.02), (1, 1, self.width), jnp.float32)
        grid = jnp.broadcast_to(mask_token.astype(self.dtype), (b, n, self.width))
        grid = grid.at[jnp.arange(b)[:, None], keep].set(y[:, 1:])
        table = positional_table(self.width, self.target_length, num_mel_bins=self.num_mel_bins,
                                 patch_size=self.patch_size, policy=self.posemb)
        z = jnp.concatenate([y[:, :1], grid], axis=1) + jnp.asarray(table, self.dtype)

        block_cls: Callable[..., nn.Module] = _RematBlock if self.remat else Block
        for i in range(self.depth):
            z = block_cls(self.width, self.num_heads, self.mlp_dim, dtype=self.dtype, attention=self.attention,
                          name=f"decoder_blocks_{i}")(z)
        z = _layer_norm("decoder_norm", self.dtype)(z)
        pred = _dense(self.patch_size * self.patch_size, "decoder_pred", self.dtype)(z)
        return pred[:, 1:].astype(jnp.float32)
