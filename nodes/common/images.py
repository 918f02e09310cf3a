"""Conversions between ComfyUI IMAGE/MASK tensors and model tensors (pure torch).

ComfyUI IMAGE is ``[B, H, W, C]`` float in [0, 1]; MASK is ``[B, H, W]`` (sometimes ``[H, W]``).
Models here work on ``[B, C, H, W]`` in [-1, 1].
"""
from __future__ import annotations

import torch

from .errors import BoundlessError


def image_to_model(image_bhwc: torch.Tensor) -> torch.Tensor:
    """IMAGE [B,H,W,C] in [0,1] -> [B,3,H,W] in [-1,1] (alpha dropped, grey expanded)."""
    if image_bhwc.ndim != 4:
        raise BoundlessError(f"expected an IMAGE tensor [B,H,W,C], got shape {tuple(image_bhwc.shape)}")
    channels = image_bhwc.shape[-1]
    if channels == 1:
        image_bhwc = image_bhwc.expand(-1, -1, -1, 3)
    elif channels == 4:
        image_bhwc = image_bhwc[..., :3]
    elif channels != 3:
        raise BoundlessError(f"IMAGE has {channels} channels; expected 1, 3 or 4")
    return image_bhwc.movedim(-1, 1).float() * 2.0 - 1.0


def model_to_image(x_bchw: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] in [-1,1] (unclamped decoder output) -> IMAGE [B,H,W,3] in [0,1]."""
    return ((x_bchw.float().clamp(-1.0, 1.0) + 1.0) * 0.5).movedim(1, -1).contiguous()


def normalize_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """MASK [H,W] or [B,H,W] (or [B,1,H,W]) -> [B,H,W] float in [0,1], checked against the image size."""
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    elif mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3:
        raise BoundlessError(f"MASK must be [H,W] or [B,H,W], got shape {tuple(mask.shape)}")
    if tuple(mask.shape[-2:]) != (height, width):
        raise BoundlessError(
            f"mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is {width}x{height}; "
            "resize the mask to the image size")
    return mask.float().clamp(0.0, 1.0)
