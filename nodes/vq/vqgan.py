"""Clean-room taming-transformers VQGAN (``VQModel``): encoder, vector quantizer, decoder.

Key names follow the released taming / latent-diffusion checkpoints exactly, so their state dicts
load strictly. The architecture is fully described by ``VQGANConfig``; ``loader.infer_config`` reads
it from a state dict. Facts: shared/specs/vqgan.md and shared/fixtures/vqgan/OPS.md.

Two properties of the original that matter for numbers:
* attention runs at the levels that *have* attention weights, whatever the input size;
* downsampling pads one row/column at the bottom/right only, then a stride-2 3x3 conv.

The blocks here also build VAR's VQVAE (``nodes/var/vqvae.py``), whose only architectural
difference is its attention block: ``Level``, ``Middle``, ``Encoder`` and ``Decoder`` therefore take
the attention block as a factory (``attention_block``), defaulting to taming's ``AttnBlock``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_levels: tuple[int, ...] = (4,)     # resolution levels (0 = full size) with attention blocks
    mid_attn: bool = True                   # False only for latent-diffusion vq-f4-noattn
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 16384

    @property
    def factor(self) -> int:
        """Pixels per latent position along each side."""
        return 2 ** (len(self.ch_mult) - 1)


NORM_GROUPS = 32
NORM_EPS = 1e-6


def group_norm(channels: int) -> nn.GroupNorm:
    """The GroupNorm of every block (32 groups, so widths must be multiples of 32)."""
    return nn.GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_bchw)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x_bchw if self.nin_shortcut is None else self.nin_shortcut(x_bchw)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all positions of one item."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x_bchw.shape
        n = self.norm(x_bchw)
        q_bnc, k_bnc, v_bnc = (proj(n).reshape(b, 1, c, h * w).transpose(-1, -2)
                               for proj in (self.q, self.k, self.v))
        out_bnc = F.scaled_dot_product_attention(q_bnc, k_bnc, v_bnc)   # scale 1/sqrt(C)
        out_bchw = out_bnc.transpose(-1, -2).reshape(b, c, h, w)
        return x_bchw + self.proj_out(out_bchw)


AttentionFactory = Callable[[int], nn.Module]   # channels -> residual attention block


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_bchw, (0, 1, 0, 1)))   # asymmetric: right and bottom only


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_bchw, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: residual blocks, each followed by attention where configured."""

    def __init__(self, widths: list[tuple[int, int]], attention: bool, resample: nn.Module | None,
                 resample_name: str, attention_block: AttentionFactory = AttnBlock):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(i, o) for i, o in widths)
        self.attn = nn.ModuleList(attention_block(o) for _, o in widths) if attention else nn.ModuleList()
        if resample is not None:
            self.add_module(resample_name, resample)
        self._resample_name = resample_name if resample is not None else None

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            x_bchw = block(x_bchw)
            if len(self.attn):
                x_bchw = self.attn[j](x_bchw)
        if self._resample_name:
            x_bchw = getattr(self, self._resample_name)(x_bchw)
        return x_bchw


class Middle(nn.Module):
    def __init__(self, channels: int, attention: bool, attention_block: AttentionFactory = AttnBlock):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = attention_block(channels) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x_bchw)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig, attention_block: AttentionFactory = AttnBlock):
        super().__init__()
        levels = len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        widths_in = [cfg.ch] + [cfg.ch * m for m in cfg.ch_mult]
        self.down = nn.ModuleList()
        for i in range(levels):
            w_in, w_out = widths_in[i], cfg.ch * cfg.ch_mult[i]
            pairs = [(w_in if j == 0 else w_out, w_out) for j in range(cfg.num_res_blocks)]
            self.down.append(Level(pairs, i in cfg.attn_levels,
                                   Downsample(w_out) if i < levels - 1 else None, "downsample", attention_block))
        top = cfg.ch * cfg.ch_mult[-1]
        self.mid = Middle(top, cfg.mid_attn, attention_block)
        self.norm_out = group_norm(top)
        self.conv_out = nn.Conv2d(top, cfg.z_channels, 3, padding=1)

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_bchw)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig, attention_block: AttentionFactory = AttnBlock):
        super().__init__()
        levels = len(cfg.ch_mult)
        top = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, top, 3, padding=1)
        self.mid = Middle(top, cfg.mid_attn, attention_block)
        up: list[Level] = [None] * levels  # type: ignore[list-item]
        w_in = top
        for i in reversed(range(levels)):
            w_out = cfg.ch * cfg.ch_mult[i]
            pairs = [(w_in if j == 0 else w_out, w_out) for j in range(cfg.num_res_blocks + 1)]
            up[i] = Level(pairs, i in cfg.attn_levels, Upsample(w_out) if i > 0 else None, "upsample",
                          attention_block)
            w_in = w_out
        self.up = nn.ModuleList(up)   # indexed by level; the lowest resolution runs first
        self.norm_out = group_norm(cfg.ch * cfg.ch_mult[0])
        self.conv_out = nn.Conv2d(cfg.ch * cfg.ch_mult[0], cfg.out_ch, 3, padding=1)

    def forward(self, z_bchw: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z_bchw))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook-row quantizer (taming ``VectorQuantizer2`` at inference); always float32."""

    keeps_float32 = True

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def indices(self, z_bchw: torch.Tensor) -> torch.Tensor:
        """[B,C,h,w] latents -> [B,h,w] int64 codebook rows, first minimum of the squared distance."""
        b, c, h, w = z_bchw.shape
        z_nc = z_bchw.float().permute(0, 2, 3, 1).reshape(-1, c)
        codes_kc = self.embedding.weight
        dist_nk = (z_nc.pow(2).sum(1, keepdim=True) + codes_kc.pow(2).sum(1)
                   - 2.0 * z_nc @ codes_kc.t())
        return dist_nk.argmin(dim=1).reshape(b, h, w)

    def lookup(self, indices_bhw: torch.Tensor) -> torch.Tensor:
        """[B,h,w] indices -> [B,C,h,w] codebook rows."""
        return self.embedding(indices_bhw).permute(0, 3, 1, 2).contiguous()


class VQGAN(nn.Module):
    """Taming ``VQModel`` at inference: encode to indices, decode from indices."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    @property
    def factor(self) -> int:
        return self.config.factor

    @property
    def n_embed(self) -> int:
        return self.config.n_embed

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype encoder and decoder compute in (the codebook stays float32)."""
        return self.quant_conv.weight.dtype

    def encode(self, x_bchw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image in [-1,1] -> (z_q [B,E,h,w], indices [B,h,w], z [B,E,h,w]), latents in float32."""
        z_bchw = self.quant_conv(self.encoder(x_bchw.to(self.weight_dtype))).float()
        indices_bhw = self.quantize.indices(z_bchw)
        return self.quantize.lookup(indices_bhw), indices_bhw, z_bchw

    def encode_indices(self, x_bchw: torch.Tensor) -> torch.Tensor:
        return self.encode(x_bchw)[1]

    def decode(self, z_q_bchw: torch.Tensor) -> torch.Tensor:
        """Quantized latents -> float32 image, not clamped (the decoder can overshoot [-1,1])."""
        return self.decoder(self.post_quant_conv(z_q_bchw.to(self.weight_dtype))).float()

    def decode_indices(self, indices_bhw: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantize.lookup(indices_bhw))

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        """Reconstruction: decode(quantize(encode(x)))."""
        return self.decode(self.encode(x_bchw)[0])
