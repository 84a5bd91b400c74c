"""A PyTorch reference of AudioMAE's pretraining model with the plain decoder (decoder_mode=0), torch alone.

`PlainMaskedAutoencoderViT` has AudioMAE's `MaskedAutoencoderViT` key names: the encoder of
`uamix_jax.interop.torch_audiomae` (`patch_embed`, `cls_token`, `pos_embed`, `blocks.i`, `norm`) and `decoder_embed`,
`mask_token`, `decoder_pos_embed` (fixed sin-cos, built on the encoder's grid), `decoder_blocks.i.*` (timm blocks),
`decoder_norm`, `decoder_pred`. Its methods follow AudioMAE's `models_mae.py`, written from its description:

    patchify:        [B, T, F] → reshape (B, 1, T/p, p, F/p, p), einsum 'nchpwq->nhwpqc' → [B, N, p²]
    random_masking:  ids_shuffle = argsort(noise), ids_restore = argsort(ids_shuffle), keep ids_shuffle[:, :n_keep]
    forward_encoder: patch_embed + pos_embed[1:], gather the kept tokens, cls + pos_embed[0] first, blocks, norm
    forward_decoder: decoder_embed, append mask tokens, un-shuffle with ids_restore, + decoder_pos_embed, blocks,
                     decoder_norm, decoder_pred, drop cls
    forward_loss:    norm_pix targets ((x − μ)/√(var + 1e-6), torch's unbiased var), MSE per patch, mean over masked

`forward(fbank, ids_keep=None)` takes the keep indices from outside (the Flax parity test passes the same ones) or
draws them as AudioMAE does. Tests and benchmarks only: this module imports torch.
"""
from __future__ import annotations

import torch
from torch import nn

from uamix_jax.interop.torch_audiomae import LN_EPS, Block, _Encoder, audiomae_pos_embed

MASK_RATIO = 0.8


class PlainMaskedAutoencoderViT(_Encoder):
    """AudioMAE's `MaskedAutoencoderViT(decoder_mode=0)` with the given encoder and decoder sizes (ViT-B defaults)."""

    def __init__(self, width: int = 768, depth: int = 12, num_heads: int = 12, mlp_dim: int = 3072,
                 patch_size: int = 16, target_length: int = 1024, num_mel_bins: int = 128,
                 decoder_width: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                 decoder_mlp_dim: int = 2048, norm_pix_loss: bool = True):
        super().__init__(width, depth, num_heads, mlp_dim, patch_size, target_length, num_mel_bins)
        self.patch_size = patch_size
        self.norm_pix_loss = norm_pix_loss
        self.norm = nn.LayerNorm(width, eps=LN_EPS)
        self.decoder_embed = nn.Linear(width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        grid = (num_mel_bins // patch_size, target_length // patch_size)  # AudioMAE's swapped patch_hw
        self.decoder_pos_embed = nn.Parameter(audiomae_pos_embed(decoder_width, grid), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(decoder_width, decoder_num_heads, decoder_mlp_dim)
                                             for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_width, eps=LN_EPS)
        self.decoder_pred = nn.Linear(decoder_width, patch_size * patch_size)
        self._init_like_mae()
        nn.init.normal_(self.mask_token, std=0.02)

    def patchify(self, fbank: torch.Tensor) -> torch.Tensor:
        """[B, T, F] → [B, (T/p)(F/p), p²] (AudioMAE's audio patchify, time as H)."""
        p = self.patch_size
        b, t, f = fbank.shape
        x = fbank.reshape(b, 1, t // p, p, f // p, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(b, (t // p) * (f // p), p * p)

    @staticmethod
    def random_masking(batch: int, num_patches: int, mask_ratio: float = MASK_RATIO,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """AudioMAE's unstructured draw: ids_keep [B, int(N(1 − r))] = the first of argsort(U(0, 1) noise)."""
        keep = int(num_patches * (1 - mask_ratio))
        noise = torch.rand(batch, num_patches, generator=generator)
        return torch.argsort(noise, dim=1)[:, :keep]

    @staticmethod
    def _restore(ids_keep: torch.Tensor, num_patches: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids_restore [B, N], mask [B, N]) of a keep set: ids_shuffle = kept ids, then the others ascending."""
        b, keep = ids_keep.shape
        hidden = torch.ones(b, num_patches, dtype=torch.bool)
        hidden.scatter_(1, ids_keep, False)
        rest = torch.arange(num_patches).expand(b, -1)[hidden].reshape(b, num_patches - keep)
        ids_shuffle = torch.cat([ids_keep, rest], dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        mask = torch.ones(b, num_patches)
        mask[:, :keep] = 0
        return ids_restore, torch.gather(mask, 1, ids_restore)

    def forward_encoder(self, fbank: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """fbank [B, T, F], ids_keep [B, n] → norm(z_L) [B, 1 + n, D]."""
        x = self.patch_embed(fbank.unsqueeze(1)) + self.pos_embed[:, 1:, :]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_decoder(self, tokens: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """tokens [B, 1 + n, D] (cls first), ids_restore [B, N] → predictions [B, N, p²]."""
        x = self.decoder_embed(tokens)
        n_hidden = ids_restore.shape[1] + 1 - x.shape[1]
        mask_tokens = self.mask_token.expand(x.shape[0], n_hidden, -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def forward_loss(self, fbank: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = self.patchify(fbank)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, fbank: torch.Tensor, ids_keep: torch.Tensor | None = None, mask_ratio: float = MASK_RATIO,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, pred [B, N, p²], mask [B, N] (1 = hidden)) for fbank [B, T, F]; ids_keep drawn when None."""
        num_patches = self.pos_embed.shape[1] - 1
        if ids_keep is None:
            ids_keep = self.random_masking(fbank.shape[0], num_patches, mask_ratio, generator)
        ids_restore, mask = self._restore(ids_keep, num_patches)
        pred = self.forward_decoder(self.forward_encoder(fbank, ids_keep), ids_restore)
        return self.forward_loss(fbank, pred, mask), pred, mask
