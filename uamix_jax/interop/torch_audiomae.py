"""A PyTorch reference of AudioMAE's ViT encoder, written with torch alone, with AudioMAE's module and state-dict names.

Two models, mirroring facebookresearch/AudioMAE (docs/method.md, "The encoder" and "Checkpoint conversion"):
- `MaskedAutoencoderViT`: the pretraining model's encoder (`patch_embed`, `cls_token`, `pos_embed`, `blocks.i`,
  `norm`) plus parameter-only placeholders for `mask_token` and the Swin decoder (`decoder_embed`,
  `decoder_pos_embed`, `decoder_blocks.j`, `decoder_norm`, `decoder_pred`) with the released keys and shapes, so a
  realistic `pretrained.pth` can be written. Its forward is the encoder without masking:
  tokens = norm(z_L), embedding = mean(tokens[:, 1:]).
- `VisionTransformer`: the fine-tuned model (no `norm`; `fc_norm`, `head`):
  tokens = z_L, embedding = fc_norm(mean(z_L[:, 1:])) (the input of `head`).
- `TimmViT`: the key set of timm's `VisionTransformer(img_size=(T, 128), patch_size=16, in_chans=1, embed_dim=D,
  depth=L, num_heads=H, num_classes=C, global_pool='avg', fc_norm=...)` (timm cannot be installed beside this torch
  here; its names are AudioMAE's): `fc_norm=False` → `norm` (tokens = norm(z_L), embedding = their patch mean),
  `fc_norm=True` → `fc_norm` and no `norm`; `head` only when C > 0. What PyTorch users load an export into.
- `NNCLRHeadTorch`: MAE-CT's NNCLR head as `nn.Sequential`s (`projector`, `predictor`, optional
  `target_projector`), the module an exported head (`tools/export_audiomae.py --head`) loads into.

Both take a normalised fbank [B, T, F] and return (tokens [B, 1 + (T/16)(F/16), D], embedding [B, D]). This module
imports torch: the rest of the package imports it lazily (converter `--check`, tests, benchmarks).
"""
from __future__ import annotations

import argparse
import math
import os

import torch
from torch import nn

LN_EPS = 1e-6


def audiomae_pos_embed(width: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """AudioMAE's `get_2d_sincos_pos_embed_flexible(width, grid_hw, cls_token=True)` in torch float64 → float32.

    Written from AudioMAE's description (meshgrid of (W-coordinates, H-coordinates), first half of the width codes
    the W coordinate, second half the H coordinate, sines then cosines, zero cls row); returns [1, 1 + H·W, width].
    """
    h, w = grid_hw
    grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float64), torch.arange(h, dtype=torch.float64),
                                    indexing="xy")  # both [h, w], numpy's default 'xy' orientation
    half = width // 2

    def code(pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000.0 ** (torch.arange(half // 2, dtype=torch.float64) / (half / 2.0))
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    table = torch.cat([code(grid_w), code(grid_h)], dim=1)
    table = torch.cat([torch.zeros(1, width, dtype=torch.float64), table], dim=0)
    return table.to(torch.float32).unsqueeze(0)


class PatchEmbed(nn.Module):
    """`patch_embed.proj`: Conv2d(1, D, 16, stride 16) over the [B, 1, T, F] image; tokens in (time, freq) order."""

    def __init__(self, width: int, patch_size: int = 16):
        super().__init__()
        self.proj = nn.Conv2d(1, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """timm 0.3.2 Attention: fused `qkv` (with bias) reshaped to (B, N, 3, H, d_h), scale d_h^-0.5, `proj`."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (width // num_heads) ** -0.5
        self.qkv = nn.Linear(width, 3 * width, bias=True)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """timm Mlp: fc1 → nn.GELU (exact erf) → fc2."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """timm 0.3.2 pre-norm Block (drop path and dropout are 0 at evaluation)."""

    def __init__(self, width: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=LN_EPS)
        self.attn = Attention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = Mlp(width, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _DecoderAttention(nn.Module):
    """Parameter placeholder with the keys of AudioMAE's Swin decoder attention (no forward needed here)."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.tau = nn.Parameter(torch.ones(num_heads))
        self.meta_mlp = Mlp(2, 384)
        self.meta_mlp.fc2 = nn.Linear(384, num_heads)


class _DecoderBlock(nn.Module):
    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=LN_EPS)
        self.attn = _DecoderAttention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = Mlp(width, 4 * width)


class _Encoder(nn.Module):
    """Shared encoder trunk: patch_embed, cls_token, pos_embed (frozen sin-cos), blocks."""

    def __init__(self, width: int, depth: int, num_heads: int, mlp_dim: int, patch_size: int, target_length: int,
                 num_mel_bins: int):
        super().__init__()
        if target_length % patch_size or num_mel_bins % patch_size:
            raise ValueError(f"target_length={target_length} and num_mel_bins={num_mel_bins} must be multiples of "
                             f"patch_size={patch_size}")
        self.patch_embed = PatchEmbed(width, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        # AudioMAE's PatchEmbed_org.patch_hw is (F/p, T/p): the swapped grid.
        table = audiomae_pos_embed(width, (num_mel_bins // patch_size, target_length // patch_size))
        self.pos_embed = nn.Parameter(table, requires_grad=False)
        self.blocks = nn.ModuleList([Block(width, num_heads, mlp_dim) for _ in range(depth)])

    def _init_like_mae(self) -> None:
        """MAE's init: xavier_uniform linears (patch conv viewed as a linear), zero biases, cls N(0, .02²), LN 1/0."""
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def trunk(self, fbank: torch.Tensor) -> torch.Tensor:
        """fbank [B, T, F] → z_L [B, 1 + n, D] (AudioMAE's forward_features up to the last block)."""
        x = self.patch_embed(fbank.unsqueeze(1)) + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return x


class MaskedAutoencoderViT(_Encoder):
    """AudioMAE's pretraining model: the encoder + `norm`, and the decoder's parameters as placeholders."""

    def __init__(self, width: int = 768, depth: int = 12, num_heads: int = 12, mlp_dim: int = 3072,
                 patch_size: int = 16, target_length: int = 1024, num_mel_bins: int = 128,
                 decoder_width: int = 512, decoder_depth: int = 16, decoder_num_heads: int = 16):
        super().__init__(width, depth, num_heads, mlp_dim, patch_size, target_length, num_mel_bins)
        self.norm = nn.LayerNorm(width, eps=LN_EPS)
        n_tokens = self.pos_embed.shape[1]
        self.decoder_embed = nn.Linear(width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n_tokens, decoder_width), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([_DecoderBlock(decoder_width, decoder_num_heads)
                                             for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_width, eps=LN_EPS)
        self.decoder_pred = nn.Linear(decoder_width, patch_size * patch_size)
        self._init_like_mae()
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, fbank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.norm(self.trunk(fbank))
        return tokens, tokens[:, 1:].mean(dim=1)


class VisionTransformer(_Encoder):
    """AudioMAE's fine-tuned model (`models_vit.VisionTransformer`, global_pool=True): no `norm`; `fc_norm`, `head`."""

    def __init__(self, width: int = 768, depth: int = 12, num_heads: int = 12, mlp_dim: int = 3072,
                 patch_size: int = 16, target_length: int = 1024, num_mel_bins: int = 128, num_classes: int = 527):
        super().__init__(width, depth, num_heads, mlp_dim, patch_size, target_length, num_mel_bins)
        self.fc_norm = nn.LayerNorm(width, eps=LN_EPS)
        self.head = nn.Linear(width, num_classes)
        self._init_like_mae()

    def forward(self, fbank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.trunk(fbank)
        return tokens, self.fc_norm(tokens[:, 1:].mean(dim=1))


class TimmViT(_Encoder):
    """timm's `VisionTransformer(..., global_pool='avg', fc_norm=fc_norm, num_classes=num_classes)` key set and forward.

    fc_norm=False: `norm` on every token, embedding = mean of the normed patch tokens (timm's avg pool of
    forward_features); fc_norm=True: no `norm`, embedding = fc_norm(mean(z_L[:, 1:])). `head` exists only for
    num_classes > 0 and is not applied in forward (logits = model.head(embedding)).
    """

    def __init__(self, width: int = 768, depth: int = 12, num_heads: int = 12, mlp_dim: int = 3072,
                 patch_size: int = 16, target_length: int = 1024, num_mel_bins: int = 128, *, fc_norm: bool = False,
                 num_classes: int = 0):
        super().__init__(width, depth, num_heads, mlp_dim, patch_size, target_length, num_mel_bins)
        self.use_fc_norm = fc_norm
        if fc_norm:
            self.fc_norm = nn.LayerNorm(width, eps=LN_EPS)
        else:
            self.norm = nn.LayerNorm(width, eps=LN_EPS)
        if num_classes > 0:
            self.head = nn.Linear(width, num_classes)
        self._init_like_mae()

    def forward(self, fbank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.trunk(fbank)
        if self.use_fc_norm:
            return z, self.fc_norm(z[:, 1:].mean(dim=1))
        tokens = self.norm(z)
        return tokens, tokens[:, 1:].mean(dim=1)


def _bn_mlp(sizes: list[int], *, last_bn: bool) -> nn.Sequential:
    """Linear(no bias) → BN → ReLU ... ; the last Linear followed by a BN (projector) or nothing (predictor)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out, bias=False))
        last = i == len(sizes) - 2
        if not last:
            layers += [nn.BatchNorm1d(fan_out), nn.ReLU()]
        elif last_bn:
            layers.append(nn.BatchNorm1d(fan_out))
    return nn.Sequential(*layers)


class NNCLRHeadTorch(nn.Module):
    """MAE-CT's NNCLR head (docs/method.md, "The NNCLR head") as PyTorch Sequentials, keyed as the export writes it.

    projector: 0 Linear(D, 2048) · 1 BN · 2 ReLU · 3 Linear(2048, 2048) · 4 BN · 5 ReLU · 6 Linear(2048, 256)
               · 7 BN
    predictor: 0 Linear(256, 4096) · 1 BN · 2 ReLU · 3 Linear(4096, 256)
    target_projector (stage 2's EMA projector, `ema=True`): the projector's layout. Linears have no bias.
    forward(h [B, D]) → (projection [B, 256] (target projector's when present), prediction [B, 256]).
    """

    def __init__(self, width: int, proj_hidden_dim: int = 2048, proj_dim: int = 256, pred_hidden_dim: int = 4096,
                 *, ema: bool = False):
        super().__init__()
        self.projector = _bn_mlp([width, proj_hidden_dim, proj_hidden_dim, proj_dim], last_bn=True)
        self.predictor = _bn_mlp([proj_dim, pred_hidden_dim, proj_dim], last_bn=False)
        self.target_projector = (_bn_mlp([width, proj_hidden_dim, proj_hidden_dim, proj_dim], last_bn=True)
                                 if ema else None)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(h)
        target = self.target_projector(h) if self.target_projector is not None else z
        return target, self.predictor(z)


def randomize_(model: nn.Module, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """Overwrites every trainable parameter (not the fixed `pos_embed`) with N(0, scale²/fan_in) draws, in place.

    Fresh MAE init has zero biases and unit LayerNorms, which would hide a wrong bias or scale mapping; random values
    everywhere make parity tests sensitive to every tensor.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            # weights [out, in...] get 1/sqrt(fan in); biases and LayerNorm vectors a 0.1 spread
            std = scale / math.sqrt(math.prod(p.shape[1:])) if p.ndim >= 2 else 0.1 * scale
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("norm.weight"):
                p.add_(1.0)
    return model


def audiomae_checkpoint(model: nn.Module, *, epoch: int = 32, optimizer_step: bool = False) -> dict:
    """The dict AudioMAE's `util/misc.py:save_model` writes: `model`, `optimizer`, `epoch`, `scaler`, `args`.

    `args` is an `argparse.Namespace` like AudioMAE's (the reason `torch.load(weights_only=True)` needs an
    allow-list). With `optimizer_step` the AdamW state holds per-parameter tensors (one zero-gradient step).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=4e-4, betas=(0.9, 0.95), weight_decay=1e-4)
    if optimizer_step:
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 117}
    args = argparse.Namespace(
        batch_size=8, epochs=33, accum_iter=1, model="mae_vit_base_patch16", input_size=224, mask_ratio=0.8,
        norm_pix_loss=True, weight_decay=1e-4, lr=4e-4, blr=2e-4, min_lr=0.0, warmup_epochs=3,
        data_path="/datasets/audioset", output_dir="./output_dir", log_dir="./output_dir", device="cuda", seed=0,
        resume="", start_epoch=0, num_workers=10, pin_mem=True, world_size=64, local_rank=-1, dist_on_itp=False,
        dist_url="env://", audio_exp=True, data_train="train.json", data_eval="eval.json",
        label_csv="class_labels_indices.csv", weight_csv="weight.csv", weight_sampler=False, distributed=True,
        roll_mag_aug=True, decoder_mode=1, mask_2d=False, target_length=1024, dataset="audioset",
        mask_t_prob=0.7, mask_f_prob=0.3, freqm=[0, 0], timem=None, rank=0, gpu=0, dist_backend="nccl",
        nb_classes=527, use_custom_patch=False, split_pos=False, pos_trainable=False,
    )
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "scaler": scaler,
            "args": args}


def save_audiomae_checkpoint(model: nn.Module, path: str | os.PathLike, *, wrap: bool = True, **kw) -> None:
    """Writes `model` as AudioMAE does (`wrap=True`: the full save_model dict; False: the bare state dict)."""
    obj = audiomae_checkpoint(model, **kw) if wrap else model.state_dict()
    torch.save(obj, os.fspath(path))


def timm_reference(state_dict: dict, info: dict) -> TimmViT:
    """The `TimmViT` a converter `info` describes, loaded strictly with the state dict's encoder keys (+ `head`).

    Decoder keys and `mask_token` (an AudioMAE pretraining file) are not part of timm's model and are skipped.
    """
    state = {k: torch.as_tensor(v) for k, v in state_dict.items()
             if not (k.startswith("decoder_") or k == "mask_token")}
    num_classes = int(state["head.weight"].shape[0]) if "head.weight" in state else 0
    model = TimmViT(width=info["width"], depth=info["depth"], num_heads=info["num_heads"], mlp_dim=info["mlp_dim"],
                    patch_size=info["patch_size"], target_length=info["target_length"],
                    num_mel_bins=info["num_mel_bins"], fc_norm=info["format"] == "finetuned",
                    num_classes=num_classes)
    model.load_state_dict(state, strict=True)
    return model.eval()


def reference_from_state_dict(state_dict: dict, info: dict) -> nn.Module:
    """Builds the torch reference described by a converter `info` dict and loads `state_dict` into it strictly:
    AudioMAE's `VisionTransformer` (fc_norm + head) or `MaskedAutoencoderViT` (norm), else `TimmViT`."""
    dims = dict(width=info["width"], depth=info["depth"], num_heads=info["num_heads"], mlp_dim=info["mlp_dim"],
                patch_size=info["patch_size"], target_length=info["target_length"],
                num_mel_bins=info["num_mel_bins"])
    state = {k: torch.as_tensor(v) for k, v in state_dict.items()}
    if (info["format"] == "finetuned") != ("head.weight" in state):  # timm's layouts: fc_norm alone, norm + head
        return timm_reference(state_dict, info)
    if info["format"] == "finetuned":
        model: nn.Module = VisionTransformer(**dims, num_classes=int(state["head.weight"].shape[0]))
    else:
        dec_blocks = {int(k.split(".")[1]) for k in state if k.startswith("decoder_blocks.")}
        dec_width = int(state["decoder_embed.weight"].shape[0]) if "decoder_embed.weight" in state else 512
        heads_key = "decoder_blocks.0.attn.tau"
        dec_heads = int(state[heads_key].shape[0]) if heads_key in state else 16
        model = MaskedAutoencoderViT(**dims, decoder_width=dec_width, decoder_depth=len(dec_blocks),
                                     decoder_num_heads=dec_heads)
        # Files without the decoder (encoder-only exports) still load: only the encoder takes part in forward.
        state = {**{k: v for k, v in model.state_dict().items() if k.startswith("decoder_") or k == "mask_token"},
                 **state}
    model.load_state_dict(state, strict=True)
    return model.eval()
