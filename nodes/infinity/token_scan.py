"""The order in which a patch's tokens are read and drawn: raster, or raster mirrored toward the
finished neighbours (models with ``config.mirrored_scan``).

Why: inside a patch the causal decoder draws one token after another. In raster order every row
starts at the patch's left edge, so when patches grow rightward (order ``right``) each row begins
beside the finished neighbour on its left and goes on from there. Growing leftward (order ``left``,
and outpainting to the left) the finished neighbour is on the *right*: each row starts far from it
and reaches it last, with whatever the row has drifted into by then, and the picture steps where the
row meets the neighbour. Measured on the raster world panorama model (10 canvases of 4×2 patches,
BENCHMARKS.md "Which side a patch starts from"): vertical seam ratio 2.09 for order ``left`` against
1.14 for ``right``; outpainting's junction 1.61× the truth's round-trip to the left, 1.24× to the
right. The same holds for ``up`` (each patch's finished neighbour is below it, raster starts at the
top).

A model with ``mirrored_scan`` reads a patch of order ``left`` in raster mirrored left–right (each
row from its right end) and of order ``up`` mirrored top–bottom (rows from the bottom), so the
first tokens of every row or column touch the finished side. Only the reading order changes:
token geometry (``rope``) keeps each token's true place in the patch, the position table is indexed
by the token's raster place, and a finished patch's cache is stored in raster order, so neighbours
read it as before. Models without the flag (all checkpoints before it) read raster for every order.
"""
from __future__ import annotations

from typing import Optional

import torch

from .adc import ORDERS

# (mirror left–right, mirror top–bottom) of each ADC order's scan, for models with mirrored_scan.
FLIPS = {"right": (False, False), "left": (True, False), "down": (False, False), "up": (False, True)}


def flips(order: int, mirrored_scan: bool) -> tuple[bool, bool]:
    """How patches of ``order`` (an index into ``adc.ORDERS``) are read: (flip_x, flip_y)."""
    return FLIPS[ORDERS[order]] if mirrored_scan else (False, False)


def scan_index(patch_h: int, patch_w: int, flip_x: bool, flip_y: bool, device=None) -> Optional[torch.Tensor]:
    """``[T]``: the raster index of the j-th token read, or None for plain raster order."""
    if not (flip_x or flip_y):
        return None
    grid_hw = torch.arange(patch_h * patch_w, device=device).view(patch_h, patch_w)
    dims = [d for d, flip in ((1, flip_x), (0, flip_y)) if flip]
    return grid_hw.flip(dims).flatten()

