"""Synthetic continuation tasks: token canvases whose patch boundaries are fully determined by a neighbour.

They isolate whether a model *can* continue its neighbours, apart from data and tokenizer: a patch's
first token column (or row) is predictable only from the patch to its left (or above), so the
teacher-forced accuracy there, against the accuracy inside patches, measures exactly the use of
the Nearby Context Pool.

* ``rows``: every token row of the canvas is one random token (the left neighbour's row decides it);
* ``columns``: every token column is one random token (the patch above decides it);
* ``ramp``: token (x, y) = (a + x + b·y) mod V for a random a and b (each token is its left
  neighbour + 1).
"""
from __future__ import annotations

import torch

from ..common.errors import BoundlessError
from .adc import scan
from .geometry import Region, patch_grid_shape
from .training import teacher_forced_argmax

TASKS = ("rows", "columns", "ramp")


def canvases(task: str, n: int, height: int, width: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` token canvases ``[n, 1, height, width]`` of a task."""
    if task == "rows":
        return torch.randint(vocab, (n, 1, height, 1), generator=generator).expand(-1, -1, -1, width).clone()
    if task == "columns":
        return torch.randint(vocab, (n, 1, 1, width), generator=generator).expand(-1, -1, height, -1).clone()
    if task == "ramp":
        a = torch.randint(vocab, (n, 1, 1, 1), generator=generator)
        b = torch.randint(vocab, (n, 1, 1, 1), generator=generator)
        y = torch.arange(height).view(1, 1, height, 1)
        x = torch.arange(width).view(1, 1, 1, width)
        return (a + x + b * y) % vocab
    raise BoundlessError(f"unknown synthetic task {task!r}; use one of {', '.join(TASKS)}")


def boundary_accuracy(model, canvases_bfhw: torch.Tensor, order: str) -> dict:
    """Teacher-forced argmax accuracy at patch boundaries that have a finished neighbour, and inside.

    ``left_boundary``: first token column of patches whose left neighbour came earlier in the scan;
    ``top_boundary``: first token row of patches whose upper neighbour came earlier; ``inside``:
    every other token except each patch's first (which has no own token before it).
    """
    ph, pw = model.config.patch_h, model.config.patch_w
    predicted = teacher_forced_argmax(model, canvases_bfhw, order)
    _, rows, cols = patch_grid_shape(canvases_bfhw, ph, pw)
    scan_index = {pos: i for i, pos in enumerate(scan(Region.whole(1, rows, cols), order))}
    left = torch.zeros(canvases_bfhw.shape[-2:], dtype=torch.bool)
    top = torch.zeros_like(left)
    for (_, r, c), index in scan_index.items():
        if scan_index.get((0, r, c - 1), index) < index:
            left[r * ph:(r + 1) * ph, c * pw] = True
        if scan_index.get((0, r - 1, c), index) < index:
            top[r * ph, c * pw:(c + 1) * pw] = True
    first = torch.zeros_like(left)
    first[::ph, ::pw] = True
    inside = ~(left | top | first)
    hit = (predicted == canvases_bfhw)[:, 0]
    result = {"inside": float(hit[:, inside].float().mean())}
    if left.any():
        result["left_boundary"] = float(hit[:, left].float().mean())
    if top.any():
        result["top_boundary"] = float(hit[:, top].float().mean())
    return {k: round(v, 4) for k, v in result.items()}
