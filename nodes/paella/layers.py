"""Small building blocks shared by the Paella networks (pure torch).

The sinusoidal noise-level embedding is the numerically delicate part: its arguments reach 1e4, so
it must be computed in float32 exactly as the reference does (scale the level by 10000 first, then
multiply by float32 frequencies) or logits drift by ~1e-3.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MAX_POSITIONS = 10000


def sinusoid_embedding(level_b: torch.Tensor, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Noise-level features ``[B, width]``: all sines, then all cosines (one zero appended if odd).

    ``level_b`` is the float32 level in [0, 1] (v3 / prior: the noise level t; v1 passes the masking
    probability ``cos(r*pi/2)``). Computed in float32 whatever the model runs in, then cast to
    ``dtype``, the model's compute dtype.
    """
    scaled_b = level_b.float() * MAX_POSITIONS
    half = width // 2
    step = math.log(MAX_POSITIONS) / (half - 1)
    freqs_k = torch.arange(half, device=level_b.device).float().mul(-step).exp()
    args_bk = scaled_b[:, None] * freqs_k[None, :]
    emb_bw = torch.cat([args_bk.sin(), args_bk.cos()], dim=1)
    if width % 2 == 1:
        emb_bw = F.pad(emb_bw, (0, 1))
    return emb_bw.to(dtype)


def layer_norm_2d(x_bchw: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm over channels of an NCHW map, without affine parameters."""
    x_bhwc = x_bchw.permute(0, 2, 3, 1)
    return F.layer_norm(x_bhwc, x_bhwc.shape[-1:], eps=eps).permute(0, 3, 1, 2)


class LayerNorm2d(nn.Module):
    """Parameter-free channel LayerNorm for NCHW maps (eps 1e-6), a module so it sits in Sequentials."""

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        return layer_norm_2d(x_bchw)


class ChannelsLastLayerNorm(nn.Module):
    """Parameter-free LayerNorm over the last dimension (eps 1e-6)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=1e-6)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2 GRN on channels-last maps; the L2 norm runs over the whole spatial grid."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels))

    def forward(self, x_bhwc: torch.Tensor) -> torch.Tensor:
        norm_b11c = torch.norm(x_bhwc, p=2, dim=(1, 2), keepdim=True)
        ratio_b11c = norm_b11c / (norm_b11c.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x_bhwc * ratio_b11c) + self.beta + x_bhwc


def shapes_of(state_dict) -> dict[str, tuple[int, ...]]:
    """{key: shape} from a state dict of tensors or from a JSON {key: [dims]} map."""
    return {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in state_dict.items()}


def shape_mismatch(module: nn.Module, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """None when ``module``'s state dict has exactly these keys and shapes, else a short message."""
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(own) - set(shapes))
    unexpected = sorted(set(shapes) - set(own))
    wrong = [f"{k} {shapes[k]} vs {own[k]}" for k in own if k in shapes and tuple(shapes[k]) != own[k]]
    if not (missing or unexpected or wrong):
        return None
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shapes", wrong)):
        if items:
            parts.append(f"{label} {', '.join(items[:3])}" + (f" (+{len(items) - 3} more)" if len(items) > 3 else ""))
    return "; ".join(parts)
