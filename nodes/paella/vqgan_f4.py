"""Paella v3's f4 VQGAN (``vqgan_f4.pt``; the same network as Würstchen / Stable Cascade Stage A).

Images in [0, 1] go through PixelUnshuffle, ConvNeXt-like blocks and a strided conv to a small
latent (BatchNorm output, 4 channels), which is quantized to the nearest codebook row. Paella decodes
token indices as ``decoder(codebook[indices])`` with no scale factor. Pure torch; names match the
released state dict; sizes are read from the keys (``VQGANF4Config.from_shapes``).
"""
from __future__ import annotations

import dataclasses
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..common.errors import BoundlessError


@dataclasses.dataclass(frozen=True)
class VQGANF4Config:
    c_levels: tuple[int, ...]   # channels per level, finest first (released: 192, 384)
    bottleneck_blocks: int      # ResBlocks at the deepest level of the decoder
    c_latent: int
    codebook_size: int

    @property
    def factor(self) -> int:
        """Pixels per token side: PixelUnshuffle(2) plus one stride-2 conv per extra level."""
        return 2 * 2 ** (len(self.c_levels) - 1)

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> "VQGANF4Config":
        if "vquantizer.codebook.weight" not in shapes:
            raise BoundlessError("not a Paella f4 VQGAN: vquantizer.codebook.weight is missing")
        codebook_size, c_latent = shapes["vquantizer.codebook.weight"]
        down = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"down_blocks\.(\d+)\.", k))})
        c_levels = [shapes[f"down_blocks.{i}.depthwise.1.weight"][0]
                    for i in down if f"down_blocks.{i}.gammas" in shapes]
        up = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"up_blocks\.(\d+)\.", k))})
        first_upsampler = next((i for i in up if f"up_blocks.{i}.weight" in shapes), None)
        last_res = first_upsampler if first_upsampler is not None else up[-1] + 1
        bottleneck = sum(1 for i in up if i < last_res and f"up_blocks.{i}.gammas" in shapes)
        return cls(c_levels=tuple(c_levels), bottleneck_blocks=bottleneck, c_latent=c_latent,
                   codebook_size=codebook_size)


class ResBlock(nn.Module):
    """Two modulated residual branches (depthwise conv, channel MLP) scaled by six learned scalars."""

    def __init__(self, c: int, c_hidden: int):
        super().__init__()
        self.depthwise = nn.Sequential(nn.ReplicationPad2d(1), nn.Conv2d(c, c, 3, groups=c))
        self.channelwise = nn.Sequential(nn.Linear(c, c_hidden), nn.GELU(), nn.Linear(c_hidden, c))
        self.gammas = nn.Parameter(torch.zeros(6))

    @staticmethod
    def _norm(x_bchw: torch.Tensor) -> torch.Tensor:
        x_bhwc = x_bchw.permute(0, 2, 3, 1)
        return F.layer_norm(x_bhwc, x_bhwc.shape[-1:], eps=1e-6).permute(0, 3, 1, 2)

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        g = self.gammas
        x_bchw = x_bchw + self.depthwise(self._norm(x_bchw) * (1 + g[0]) + g[1]) * g[2]
        mlp_in_bhwc = (self._norm(x_bchw) * (1 + g[3]) + g[4]).permute(0, 2, 3, 1)
        return x_bchw + self.channelwise(mlp_in_bhwc).permute(0, 3, 1, 2) * g[5]


class Codebook(nn.Module):
    """Holds ``codebook.weight`` [K, c_latent] under the released name ``vquantizer.codebook``; float32."""

    keeps_float32 = True

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.codebook = nn.Embedding(size, dim)

    def nearest(self, z_nc: torch.Tensor) -> torch.Tensor:
        """Index of the nearest row for each vector ``[N, c]`` (|c|^2 + |z|^2 - 2 z.c, first minimum)."""
        codes_kc = self.codebook.weight
        z_nc = z_nc.float()
        dist_nk = (codes_kc.pow(2).sum(dim=1)[None, :] + z_nc.pow(2).sum(dim=1, keepdim=True)
                   - 2 * (z_nc @ codes_kc.t()))
        return dist_nk.argmin(dim=1)


class VQGANF4(nn.Module):
    def __init__(self, config: VQGANF4Config):
        super().__init__()
        self.config = cfg = config
        c = cfg.c_levels
        self.in_block = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(3 * 4, c[0], 1))
        down = []
        for i, width in enumerate(c):
            if i > 0:
                down.append(nn.Conv2d(c[i - 1], width, 4, stride=2, padding=1))
            down.append(ResBlock(width, width * 4))
        down.append(nn.Sequential(nn.Conv2d(c[-1], cfg.c_latent, 1, bias=False), nn.BatchNorm2d(cfg.c_latent)))
        self.down_blocks = nn.Sequential(*down)
        self.vquantizer = Codebook(cfg.codebook_size, cfg.c_latent)
        up = [nn.Sequential(nn.Conv2d(cfg.c_latent, c[-1], 1))]
        for i in reversed(range(len(c))):
            for _ in range(cfg.bottleneck_blocks if i == len(c) - 1 else 1):
                up.append(ResBlock(c[i], c[i] * 4))
            if i > 0:
                up.append(nn.ConvTranspose2d(c[i], c[i - 1], 4, stride=2, padding=1))
        self.up_blocks = nn.Sequential(*up)
        self.out_block = nn.Sequential(nn.Conv2d(c[0], 3 * 4, 1), nn.PixelShuffle(2))

    @property
    def codebook(self) -> torch.Tensor:
        """[K, c_latent]"""
        return self.vquantizer.codebook.weight

    def encode(self, image_b3hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image in [0, 1] -> (indices [B, H/f, W/f], pre-quantization latent [B, c_latent, H/f, W/f])."""
        f = self.config.factor
        if image_b3hw.shape[-2] % f or image_b3hw.shape[-1] % f:
            raise BoundlessError(f"the f4 VQGAN needs image sides that are multiples of {f} px, got "
                                 f"{image_b3hw.shape[-1]}x{image_b3hw.shape[-2]}; crop or resize the image")
        latent_bchw = self.down_blocks(self.in_block(image_b3hw.to(self.weight_dtype))).float()
        return self.quantize(latent_bchw), latent_bchw

    def quantize(self, latent_bchw: torch.Tensor) -> torch.Tensor:
        batch, c, h, w = latent_bchw.shape
        flat_nc = latent_bchw.permute(0, 2, 3, 1).reshape(-1, c)
        return self.vquantizer.nearest(flat_nc).view(batch, h, w)

    def decode_indices(self, indices_bhw: torch.Tensor) -> torch.Tensor:
        """Indices -> image ``[B, 3, f*h, f*w]``, unclamped (no scale factor, as Paella decodes)."""
        latent_bchw = self.vquantizer.codebook(indices_bhw).permute(0, 3, 1, 2)
        return self.out_block(self.up_blocks(latent_bchw.to(self.weight_dtype))).float()

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype the convolutions compute in (the codebook stays float32)."""
        return self.out_block[0].weight.dtype
