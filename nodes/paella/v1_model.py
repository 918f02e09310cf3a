"""The Paella v1 token model (2022, ``model_600000.pt``): ``DenoiseUNet`` (pure torch).

A convolutional U-Net over VQGAN f8 tokens whose every residual block is modulated per position by
one conditioning vector (an OpenCLIP ViT-g-14 embedding concatenated with a sinusoidal embedding of
the masking level). Because the modulation is per position, the condition may also be a spatial map
``[B, C, h, w]`` (regional prompts); each block resizes it bilinearly to its own resolution.
Names match the released state dict; sizes are read from the keys (``PaellaV1Config.from_shapes``).
"""
from __future__ import annotations

import dataclasses
import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..common.errors import BoundlessError
from .layers import sinusoid_embedding

# Not stored in the checkpoint: the width of the masking-level embedding.
R_EMBEDDING_WIDTH = 64


@dataclasses.dataclass(frozen=True)
class PaellaV1Config:
    num_labels: int
    c_levels: tuple[int, ...]   # channels per level, finest first (released: 320, 640, 1280)
    blocks: tuple[int, ...]     # residual blocks per down level, finest first (released: 4, 8, 16)
    c_clip: int
    c_r: int = R_EMBEDDING_WIDTH
    # residual blocks per up level, finest first; None = as ``blocks``. The authors' DenoiseUNet takes
    # ``down_levels`` and ``up_levels`` separately (released: [4, 8, 16] and [16, 8, 4], i.e. mirrored).
    up_blocks: tuple[int, ...] | None = None

    @property
    def up(self) -> tuple[int, ...]:
        return self.blocks if self.up_blocks is None else self.up_blocks

    @property
    def token_multiple(self) -> int:
        return 2 ** (len(self.c_levels) - 1)

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> "PaellaV1Config":
        try:
            num_labels, _ = shapes["embedding.weight"]
            cond_width = shapes["down_blocks.0.0.cond_mapper.weight"][1]
        except KeyError as exc:
            raise BoundlessError(f"not a Paella v1 checkpoint: key {exc} is missing") from exc
        levels = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"down_blocks\.(\d+)\.", k)))
        c_levels, blocks = [], []
        for level in range(levels):
            indices = sorted({int(m.group(1)) for k in shapes
                              if (m := re.match(rf"down_blocks\.{level}\.(\d+)\.gamma$", k))})
            if not indices:
                raise BoundlessError(f"Paella v1 checkpoint: level {level} has no residual blocks")
            c_levels.append(shapes[f"down_blocks.{level}.{indices[0]}.gamma"][0])
            blocks.append(len(indices))
        up = []
        for level in range(levels):              # up_blocks.0 is the coarsest level
            up.append(sum(1 for k in shapes if re.match(rf"up_blocks\.{levels - 1 - level}\.\d+\.gamma$", k)))
        if 0 in up:
            raise BoundlessError(f"Paella v1 checkpoint: up level {up.index(0)} has no residual blocks")
        return cls(num_labels=num_labels, c_levels=tuple(c_levels), blocks=tuple(blocks),
                   c_clip=cond_width - R_EMBEDDING_WIDTH, up_blocks=None if up == blocks else tuple(up))


class ModulatedLayerNorm(nn.Module):
    """Affine LayerNorm whose output is scaled and shifted by the per-position condition ``w``."""

    def __init__(self, c: int):
        super().__init__()
        self.ln = nn.LayerNorm(c, eps=1e-6)
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1))

    def forward(self, x_bhwc: torch.Tensor, w_bhwc: torch.Tensor) -> torch.Tensor:
        return self.gamma * w_bhwc * self.ln(x_bhwc) + self.beta * w_bhwc


class ResBlock(nn.Module):
    """Reflection-padded depthwise conv, modulated LayerNorm, (skip concat), channel MLP, layer scale."""

    def __init__(self, c: int, c_cond: int, c_skip: int = 0):
        super().__init__()
        self.depthwise = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3, groups=c))
        self.ln = ModulatedLayerNorm(c)
        self.channelwise = nn.Sequential(nn.Linear(c + c_skip, 4 * c), nn.GELU(), nn.Linear(4 * c, c))
        self.gamma = nn.Parameter(torch.zeros(c))
        self.cond_mapper = nn.Linear(c_cond, c)

    def forward(self, x_bchw: torch.Tensor, s_bshw: torch.Tensor,
                skip_bchw: torch.Tensor | None = None) -> torch.Tensor:
        residual = x_bchw
        size = x_bchw.shape[-2:]
        if s_bshw.shape[-2:] != (1, 1) and s_bshw.shape[-2:] != size:
            s_bshw = F.interpolate(s_bshw, size=size, mode="bilinear", align_corners=False)
        w_bhwc = self.cond_mapper(s_bshw.permute(0, 2, 3, 1))
        x_bhwc = self.ln(self.depthwise(x_bchw).permute(0, 2, 3, 1), w_bhwc)
        if skip_bchw is not None:
            x_bhwc = torch.cat([x_bhwc, skip_bchw.permute(0, 2, 3, 1)], dim=-1)
        return residual + self.channelwise(x_bhwc).permute(0, 3, 1, 2) * self.gamma[None, :, None, None]


class PaellaV1(nn.Module):
    """Token logits ``[B, num_labels, H, W]`` for tokens ``[B, H, W]``, condition and progress ``r``."""

    def __init__(self, config: PaellaV1Config):
        super().__init__()
        self.config = cfg = config
        c = cfg.c_levels
        c_cond = cfg.c_clip + cfg.c_r
        self.embedding = nn.Embedding(cfg.num_labels, c[0])
        self.down_blocks = nn.ModuleList()
        for i, width in enumerate(c):
            level = nn.ModuleList()
            if i > 0:
                level.append(nn.Conv2d(c[i - 1], width, 4, stride=2, padding=1))
            level.extend(ResBlock(width, c_cond) for _ in range(cfg.blocks[i]))
            self.down_blocks.append(level)
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(len(c))):
            level = nn.ModuleList(ResBlock(c[i], c_cond, c[i] if (j == 0 and i < len(c) - 1) else 0)
                                  for j in range(cfg.up[i]))
            if i > 0:
                level.append(nn.ConvTranspose2d(c[i], c[i - 1], 4, stride=2, padding=1))
            self.up_blocks.append(level)
        self.clf = nn.Conv2d(c[0], cfg.num_labels, 1)

    def condition_map(self, c: torch.Tensor, r_b: torch.Tensor) -> torch.Tensor:
        """``[B, c_clip + c_r, h, w]``: the condition (vector -> 1x1 map) with the level embedding."""
        r_emb_br = sinusoid_embedding(torch.cos(r_b.float() * math.pi / 2), self.config.c_r, c.dtype)
        if c.ndim == 2:
            return torch.cat([c, r_emb_br], dim=1)[:, :, None, None]
        r_map = r_emb_br[:, :, None, None].expand(-1, -1, *c.shape[-2:])
        return torch.cat([c, r_map], dim=1)

    def forward(self, tokens_bhw: torch.Tensor, c: torch.Tensor, r_b: torch.Tensor) -> torch.Tensor:
        s_bshw = self.condition_map(c, r_b)
        x = self.embedding(tokens_bhw).permute(0, 3, 1, 2)
        level_outputs = []
        for level in self.down_blocks:
            for block in level:
                x = block(x, s_bshw) if isinstance(block, ResBlock) else block(x)
            level_outputs.insert(0, x)
        for i, level in enumerate(self.up_blocks):
            for j, block in enumerate(level):
                if isinstance(block, ResBlock):
                    x = block(x, s_bshw, level_outputs[i] if (j == 0 and i > 0) else None)
                else:
                    x = block(x)
        return self.clf(x)
