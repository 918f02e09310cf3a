"""Token geometry: rotary position embeddings on canvas coordinates, shared by a patch and its context.

Why: a patch must continue its neighbours, and the token that decides how a row goes on is the
one just left of (or above) the token being predicted, which sits in a *context* patch. Without
this geometry a context token's place reaches the attention only through the absolute position
embedding baked into its cached state plus one learned vector per neighbouring *patch*, so "the
token just left of me" has to be found among hundreds of context entries by matching learned
absolute embeddings across patches; the demo models never learned it and left a seam at every
patch column (see BENCHMARKS.md, "Continuity"). With rotary embeddings on coordinates of the
canvas, every query and key carries its own (x, y[, t]) and attention scores depend on the
*offset* between the two tokens, the same for own and context tokens, so "one to the left"
is one fixed relation wherever it is.

Coordinates are in tokens, relative to the current patch's top-left token; frames count in
frames. Query position ``s`` predicts token ``s``, so it is placed at token ``s``; key position
``s`` carries token ``s - 1`` (position 0 is the start vector, placed just before token 0 in
raster order); a context patch at offset (dw, dh, df) places its token ``i`` at
``(dw * patch_w + i % patch_w, dh * patch_h + i // patch_w, df)``. The head dimension is split
into rotation pairs, an equal share per axis (x, y, and t for video models); left-over pairs are
not rotated.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..common.errors import BoundlessError

DEFAULT_BASE = 100  # wavelengths from 2π to ~2π·100 tokens: neighbours apart, a few patches unambiguous


def axes_of(frames: int) -> int:
    """2 axes (x, y) for image models, 3 (x, y, t) for video models (trained extent e_f >= 1)."""
    return 3 if frames else 2


def check_head_dim(head_dim: int, axes: int) -> None:
    if head_dim // 2 < axes:
        raise BoundlessError(f"rotary token geometry needs at least {2 * axes} channels per head, got {head_dim}; "
                             "use fewer heads or a wider model")


def frequencies(head_dim: int, axes: int, base: int) -> torch.Tensor:
    """Angular frequency per pair and axis, ``[axes, pairs_per_axis]`` (float32)."""
    per_axis = head_dim // 2 // axes
    return (float(base) ** (-torch.arange(per_axis, dtype=torch.float64) / per_axis)).float().expand(axes, -1)


def angles(coords_n3: torch.Tensor, head_dim: int, axes: int, base: int) -> torch.Tensor:
    """Rotation angle of every pair for tokens at integer ``coords_n3`` (x, y, t): ``[N, head_dim // 2]``."""
    freqs = frequencies(head_dim, axes, base).to(coords_n3.device)
    parts = coords_n3[:, :axes, None].float() * freqs                                   # [N, axes, per_axis]
    theta = torch.zeros(coords_n3.shape[0], head_dim // 2, device=coords_n3.device)
    theta[:, :parts.shape[1] * parts.shape[2]] = parts.flatten(1)
    return theta


Rotation = tuple[torch.Tensor, torch.Tensor]   # cos, sin [N, head_dim / 2]


def rotation(theta_nr: torch.Tensor, dtype: torch.dtype) -> Rotation:
    """cos and sin of the angles, computed in float32 and cast once to the model's dtype."""
    return theta_nr.cos().to(dtype), theta_nr.sin().to(dtype)


def rotate(x_bhnd: torch.Tensor, rot: Rotation) -> torch.Tensor:
    """Rotate the pairs ``(x[..., i], x[..., i + d/2])`` of queries or keys (half-split layout)."""
    cos, sin = rot
    x1, x2 = x_bhnd.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def raster(index_n: torch.Tensor, patch_w: int) -> torch.Tensor:
    """Coordinates ``[N, 3]`` (x, y, 0) of raster indices inside a patch; index -1 lies just before token 0."""
    return torch.stack([index_n % patch_w, torch.div(index_n, patch_w, rounding_mode="floor"),
                        torch.zeros_like(index_n)], dim=1)


def mirrored_in_patch(coords_n3: torch.Tensor, patch_h: int, patch_w: int, flip_x: bool,
                      flip_y: bool) -> torch.Tensor:
    """Raster coordinates mirrored inside the patch: the scan that starts at its right (``flip_x``)
    or bottom (``flip_y``) side instead of its top-left corner (``token_scan.scan_index``)."""
    x, y, t = coords_n3.unbind(1)
    return torch.stack([patch_w - 1 - x if flip_x else x, patch_h - 1 - y if flip_y else y, t], dim=1)


def own_coords(tokens_per_patch: int, patch_w: int, device=None, patch_h: int = 0, flip_x: bool = False,
               flip_y: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and key coordinates ``[T + 1, 3]`` of the T + 1 positions of the current patch, read in
    raster order or, with a flip, in that mirrored raster (``patch_h`` needed then)."""
    s = torch.arange(tokens_per_patch + 1, device=device)
    q, k = raster(s, patch_w), raster(s - 1, patch_w)
    if flip_x or flip_y:
        q, k = (mirrored_in_patch(c, patch_h, patch_w, flip_x, flip_y) for c in (q, k))
    return q, k


def context_coords(offsets: Sequence[tuple[int, int, int]], patch_h: int, patch_w: int, device=None) -> torch.Tensor:
    """Key coordinates ``[len(offsets) * T, 3]`` of the tokens of context patches at (dw, dh, df) offsets."""
    inside = raster(torch.arange(patch_h * patch_w, device=device), patch_w)          # [T, 3]
    shift = torch.tensor([(dw * patch_w, dh * patch_h, df) for dw, dh, df in offsets], device=device)
    return (shift[:, None, :] + inside[None]).flatten(0, 1)
