"""The v3 CLIP prior (``prior_v1.pt``): CLIP text vector -> CLIP image vector by DDPM (pure torch).

Paella v3 was trained with CLIP *image* tokens; for text-to-image the official notebook first
samples an image vector from this MLP diffusion prior (cosine schedule, 60 DDPM steps, CFG 3 as a
lerp against an all-zero text vector) and feeds it as ``clip_image``.
"""
from __future__ import annotations

import dataclasses
import math
import re

import torch
from torch import nn

from ..common.draws import MODEL_DEVICE, Draws
from ..common.errors import BoundlessError
from ..common.progress import Progress, no_progress
from .layers import sinusoid_embedding


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    clip_width: int
    c_hidden: int
    c_r: int
    num_blocks: int
    expansion: int

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> "PriorConfig":
        if "blocks.0.weight" not in shapes or "blocks.1.0.weight" not in shapes:
            raise BoundlessError("not a Paella v3 prior checkpoint: blocks.0 / blocks.1.0 weights are missing")
        c_hidden, clip_width = shapes["blocks.0.weight"]
        wide, cat_width = shapes["blocks.1.0.weight"]
        count = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k)))
        return cls(clip_width=clip_width, c_hidden=c_hidden, c_r=cat_width - c_hidden - clip_width,
                   num_blocks=count - 2, expansion=wide // c_hidden)


class PriorModel(nn.Module):
    """Predicts the noise of a noisy CLIP image vector given the CLIP text vector and the time."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = cfg = config
        wide = cfg.c_hidden * cfg.expansion
        residual = [nn.Sequential(nn.Linear(cfg.c_hidden + cfg.clip_width + cfg.c_r, wide, bias=False),
                                  nn.LayerNorm(wide), nn.GELU(), nn.Linear(wide, cfg.c_hidden, bias=False),
                                  nn.LayerNorm(cfg.c_hidden))
                    for _ in range(cfg.num_blocks)]
        self.blocks = nn.ModuleList([nn.Linear(cfg.clip_width, cfg.c_hidden), *residual,
                                     nn.Linear(cfg.c_hidden, cfg.clip_width)])

    def forward(self, x_bc: torch.Tensor, r_b: torch.Tensor, text_bc: torch.Tensor) -> torch.Tensor:
        r_emb_br = sinusoid_embedding(r_b, self.config.c_r, self.blocks[0].weight.dtype)
        h_bh = self.blocks[0](x_bc)
        for block in self.blocks[1:-1]:
            h_bh = block(torch.cat([h_bh, text_bc, r_emb_br], dim=1)) + h_bh
        return self.blocks[-1](h_bh)


COSINE_S = 0.008


def alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """Cosine-schedule cumulative alpha (Nichol & Dhariwal), clamped to [1e-4, 0.9999]."""
    s = torch.tensor([COSINE_S], device=t.device)
    start = torch.cos(s / (1 + s) * math.pi * 0.5) ** 2
    return (torch.cos((t + s) / (1 + s) * math.pi * 0.5) ** 2 / start).clamp(0.0001, 0.9999)


def sample_prior(prior: PriorModel, text_bc: torch.Tensor, seed: int, steps: int = 60, cfg: float = 3.0,
                 t_start: float = 1.0, t_end: float = 0.0, progress: Progress = no_progress,
                 draws: str = MODEL_DEVICE) -> torch.Tensor:
    """DDPM from noise to a CLIP image vector ``[B, C]``, as the notebook calls the prior.

    RNG: one generator seeded with ``seed`` (``common.draws``: the model's device or the CPU):
    ``randn(B, C)`` for the start, then one ``randn`` per step (also the last, where it is
    multiplied by zero).
    """
    if steps < 1:
        raise BoundlessError(f"prior steps must be at least 1, got {steps}")
    if text_bc.ndim != 2 or text_bc.shape[1] != prior.config.clip_width:
        raise BoundlessError(f"the prior needs a CLIP text vector [B, {prior.config.clip_width}], "
                             f"got {tuple(text_bc.shape)}")
    device = text_bc.device
    rng = Draws(seed, device, draws)
    batch = text_bc.shape[0]
    times = torch.linspace(t_start, t_end, steps + 2)[1:].to(device)
    x_bc = rng.randn(text_bc.shape)
    dtype = prior.blocks[0].weight.dtype          # the network's; the DDPM update stays in float32
    text_bc = text_bc.to(dtype)
    zeros_bc = torch.zeros_like(text_bc)
    for k in range(steps):
        t_b = times[k].expand(batch)
        t_prev_b = times[k + 1].expand(batch)
        x_in = x_bc.to(dtype)
        eps_bc = torch.lerp(prior(x_in, t_b, zeros_bc).float(), prior(x_in, t_b, text_bc).float(), cfg)
        abar, abar_prev = alpha_bar(t_b)[:, None], alpha_bar(t_prev_b)[:, None]
        alpha = abar / abar_prev
        mu_bc = (1.0 / alpha).sqrt() * (x_bc - (1 - alpha) * eps_bc / (1 - abar).sqrt())
        sigma = ((1 - alpha) * (1.0 - abar_prev) / (1.0 - abar)).sqrt()
        noise_bc = rng.randn(text_bc.shape)
        x_bc = mu_bc + sigma * noise_bc * (t_prev_b != 0).float()[:, None]
        progress(k + 1, steps)
    return x_bc
