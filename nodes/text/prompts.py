"""Prompt maps: one text for the whole canvas plus optional per-region texts (pure torch).

The value of the ``BOUNDLESS_TEXT`` socket. ``Encode Text`` makes a map with a base prompt;
``Regional Text`` returns a new map with one more rectangle of patches that uses another prompt
(later regions win where they overlap). Generators ask ``states_at(col, row)`` for each patch, so
on an endless canvas the sky can turn from day to sunset wherever the user puts the boundary;
the NCP carries the neighbouring patches across it, so the change is gradual, not a cut.
Maps are immutable: nodes never change a map they receive.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from ..common.errors import BoundlessError
from .minilm import TextEmbedding


@dataclasses.dataclass(frozen=True)
class Region:
    """Patches ``[col, col + cols) × [row, row + rows)`` of the output canvas, all frames."""

    col: int
    row: int
    cols: int
    rows: int
    text: TextEmbedding

    def __contains__(self, cell: tuple[int, int]) -> bool:
        col, row = cell
        return self.col <= col < self.col + self.cols and self.row <= row < self.row + self.rows


@dataclasses.dataclass(frozen=True)
class PromptMap:
    """base: the prompt for the whole canvas. empty: the same encoder's states of the empty prompt,
    which caption dropout trained as "no text": the unconditional side of text guidance."""

    base: TextEmbedding
    regions: tuple[Region, ...] = ()
    empty: Optional[TextEmbedding] = None

    def __post_init__(self):
        for text in (self.base, *(r.text for r in self.regions), *([self.empty] if self.empty else [])):
            if text.states.shape[0] != 1:
                raise BoundlessError(f"a prompt map holds one prompt per region, got a batch of {text.states.shape[0]}")
            if text.encoder != self.base.encoder:
                raise BoundlessError("all prompts of a map must come from the same text encoder; encode the regional "
                                     "prompt with the encoder of the base prompt")

    @property
    def encoder(self) -> str:
        return self.base.encoder

    @property
    def dim(self) -> int:
        return int(self.base.states.shape[-1])

    def with_region(self, col: int, row: int, cols: int, rows: int, text: TextEmbedding) -> "PromptMap":
        if col < 0 or row < 0 or cols < 1 or rows < 1:
            raise BoundlessError(f"region at ({col}, {row}) of {cols}×{rows} patches is empty or negative; "
                                 "give a column/row >= 0 and a size of at least 1×1 patch")
        return dataclasses.replace(self, regions=(*self.regions, Region(col, row, cols, rows, text)))

    def states_at(self, col: int, row: int) -> torch.Tensor:
        """Text states ``[1, L, C]`` of the patch at (col, row): the last region holding it, else the base."""
        for region in reversed(self.regions):
            if (col, row) in region:
                return region.text.states
        return self.base.states

    def describe(self) -> str:
        parts = [repr(self.base.prompts[0])]
        parts += [f"{r.cols}×{r.rows} at ({r.col},{r.row}): {r.text.prompts[0]!r}" for r in self.regions]
        return "; ".join(parts)
