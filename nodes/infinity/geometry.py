"""Patch coordinates on a token canvas.

A canvas is ``[B, F, H_tokens, W_tokens]`` int64 token indices (-1 = not generated yet), cut into
non-overlapping patches of ``patch_h × patch_w`` tokens. A patch is addressed by
``PatchPos = (frame, row, col)`` in patch units; images have one frame.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import torch

from ..common.errors import BoundlessError

PatchPos = tuple[int, int, int]  # (frame, row, col) in patches

UNKNOWN = -1  # token value of a not-yet-generated canvas cell


@dataclasses.dataclass(frozen=True)
class Region:
    """A box of patches ``[f0, f0+frames) × [r0, r0+rows) × [c0, c0+cols)``.

    The NCP of one generation phase lives in a region: windows are clipped to it, and with
    horizontal wrap-around the column distance is taken modulo ``cols``.
    """

    f0: int
    r0: int
    c0: int
    frames: int
    rows: int
    cols: int

    @classmethod
    def whole(cls, frames: int, rows: int, cols: int) -> "Region":
        return cls(0, 0, 0, frames, rows, cols)

    def __contains__(self, pos: PatchPos) -> bool:
        f, r, c = pos
        return (self.f0 <= f < self.f0 + self.frames and self.r0 <= r < self.r0 + self.rows
                and self.c0 <= c < self.c0 + self.cols)

    @property
    def size(self) -> int:
        return self.frames * self.rows * self.cols

    def as_tuple(self) -> tuple[int, int, int, int, int, int]:
        return (self.f0, self.r0, self.c0, self.frames, self.rows, self.cols)

    def positions(self) -> Iterator[PatchPos]:
        for f in range(self.f0, self.f0 + self.frames):
            for r in range(self.r0, self.r0 + self.rows):
                for c in range(self.c0, self.c0 + self.cols):
                    yield (f, r, c)


def patch_grid_shape(tokens_bfhw: torch.Tensor, patch_h: int, patch_w: int) -> tuple[int, int, int]:
    """(frames, rows, cols) in patches of a token canvas; sizes must be patch multiples."""
    if tokens_bfhw.ndim != 4:
        raise BoundlessError(f"token canvas must be [B, F, H, W], got shape {tuple(tokens_bfhw.shape)}")
    _, frames, height, width = tokens_bfhw.shape
    if height % patch_h or width % patch_w or height == 0 or width == 0:
        raise BoundlessError(
            f"token map is {width}×{height} tokens, not a multiple of the model's {patch_w}×{patch_h}-token "
            f"patch; crop or pad the image so its width and height are multiples of "
            f"{patch_w}×{patch_h} tokens (times the VQGAN factor in pixels)")
    return frames, height // patch_h, width // patch_w


def read_patch(tokens_bfhw: torch.Tensor, pos: PatchPos, patch_h: int, patch_w: int) -> torch.Tensor:
    """Tokens of one patch in raster order, ``[B, patch_h * patch_w]``."""
    f, r, c = pos
    block = tokens_bfhw[:, f, r * patch_h:(r + 1) * patch_h, c * patch_w:(c + 1) * patch_w]
    return block.reshape(tokens_bfhw.shape[0], patch_h * patch_w)


def write_patch(tokens_bfhw: torch.Tensor, pos: PatchPos, patch_bt: torch.Tensor,
                patch_h: int, patch_w: int) -> None:
    """Store ``[B, patch_h * patch_w]`` raster-order tokens (or ``[B, patch_h * patch_w, ...]`` values per
    token, into a canvas ``[B, F, H, W, ...]``) into the canvas in place."""
    f, r, c = pos
    tokens_bfhw[:, f, r * patch_h:(r + 1) * patch_h, c * patch_w:(c + 1) * patch_w] = \
        patch_bt.reshape(patch_bt.shape[0], patch_h, patch_w, *patch_bt.shape[2:]).to(tokens_bfhw.dtype)
