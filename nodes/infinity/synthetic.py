"""Synthetic continuation tasks: token canvases whose patch boundaries are fully determined by a neighbour.

They isolate whether a model *can* continue its neighbours, apart from data and tokenizer: a patch's
first token column (or row) is predictable only from the patch to its left (or above), so the
teacher-forced accuracy there, against the accuracy inside patches, measures exactly the use of
the Nearby Context Pool.

* ``rows``: every token row of the canvas is one random token (the left neighbour's row decides it);
* ``columns``: every token column is one random token (the patch above decides it);
* ``ramp``: token (x, y) = (a + x + b·y) mod V for a random a and b (each token is its left
  neighbour + 1);
* ``walk``: every token row is a random walk mod V (each token is its left neighbour − 1, + 0 or
  + 1). A patch drawn leftward must end each row within one code of its right neighbour's first
  token: easy when the row is read from that end (``token_scan``), a guess when it is read from the
  far end, which is what tells a mirrored scan from raster (``steps_over``).

And one video task, ``pan_clips``: a camera pan over two layers. Half the token rows (codes of the
lower half of the vocabulary) stand still; the other rows (upper half) move one token left a frame,
a random token entering at the right. Predicting a moving token needs the token one to the right in
the previous frame; which rule applies, the code of the previous frame's token tells.
"""
from __future__ import annotations

import torch

from ..common.errors import BoundlessError
from .adc import scan
from .geometry import Region, patch_grid_shape
from .training import teacher_forced_argmax

TASKS = ("rows", "columns", "ramp", "walk")


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
    if task == "walk":
        steps = torch.randint(-1, 2, (n, 1, height, width), generator=generator)
        steps[..., 0] = torch.randint(vocab, (n, 1, height), generator=generator)
        return steps.cumsum(-1) % vocab
    raise BoundlessError(f"unknown synthetic task {task!r}; use one of {', '.join(TASKS)}")


def pan_clips(n: int, frames: int, height: int, width: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` clips ``[n, frames, height, width]`` of the two-layer pan (``vocab`` even, at least 4)."""
    if vocab < 4 or vocab % 2:
        raise BoundlessError(f"the pan task needs an even vocabulary of at least 4 codes, got {vocab}")
    half = vocab // 2
    moving_n1h1 = torch.rand(n, 1, height, 1, generator=generator) < 0.5
    strip = torch.randint(half, (n, 1, height, width + frames), generator=generator) + half * moving_n1h1
    return torch.cat([torch.where(moving_n1h1, strip[..., t:t + width], strip[..., :width]) for t in range(frames)], 1)


def steps_over(canvases_bfhw: torch.Tensor, vocab: int, patch_w: int) -> dict:
    """``walk`` task: share of left–right token pairs more than one code apart (mod ``vocab``), across
    patch columns and inside patches. Real walks have none."""
    step = (canvases_bfhw[..., 1:] - canvases_bfhw[..., :-1]) % vocab
    broken = (step > 1) & (step < vocab - 1)
    across = torch.zeros(broken.shape[-1], dtype=torch.bool)
    across[patch_w - 1::patch_w] = True
    return {"across": round(float(broken[..., across].float().mean()), 4),
            "inside": round(float(broken[..., ~across].float().mean()), 4)}


def motion_accuracy(model, clips_bfhw: torch.Tensor) -> dict:
    """Teacher-forced argmax accuracy on frames 1.. of clips (order ``right``), split into the tokens
    that differ from the previous frame's token at the same place (``moved``) and those that equal it
    (``kept``); the last token column (new content) is left out."""
    predicted = teacher_forced_argmax(model, clips_bfhw, "right")[:, 1:, :, :-1]
    truth, previous = clips_bfhw[:, 1:, :, :-1], clips_bfhw[:, :-1, :, :-1]
    hit, moved = predicted == truth, truth != previous
    return {"moved": round(float(hit[moved].float().mean()), 4), "kept": round(float(hit[~moved].float().mean()), 4)}


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
