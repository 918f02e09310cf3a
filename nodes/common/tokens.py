"""The pack-wide discrete-token value carried by the ``BOUNDLESS_TOKENS`` socket (pure torch).

VQGAN, Paella, VAR and NUWA-Infinity all exchange token grids through this one type, so a user can
wire e.g. a VAR-made image's tokens into another node as long as the tokenizers agree. A value is
immutable: nodes build a new ``Tokens`` instead of editing one.
"""
from __future__ import annotations

import dataclasses
import hashlib

import torch

from .errors import BoundlessError


@dataclasses.dataclass(frozen=True)
class Tokens:
    """Token maps plus the identity of the tokenizer that can decode them.

    scales: one int64 ``[B, h_k, w_k]`` map per scale, coarsest first. Single-scale tokenizers
        (taming VQGAN, Paella's f4/f8) hold exactly one map; VAR's multi-scale VQVAE holds K.
    tokenizer: fingerprint of the tokenizer (kind and codebook hash, see ``fingerprint``); decoding
        with a different tokenizer is refused because the indices would mean other codes.
    factor: pixels per token side at the finest scale (16 for taming f16).
    """

    scales: tuple[torch.Tensor, ...]
    tokenizer: str
    factor: int

    def __post_init__(self):
        if not self.scales:
            raise BoundlessError("Tokens needs at least one token map")
        batch = self.scales[0].shape[0]
        for grid in self.scales:
            if grid.ndim != 3 or grid.dtype != torch.int64 or grid.shape[0] != batch:
                raise BoundlessError(f"token maps must be int64 [B,h,w] with one batch size, got "
                                     f"{tuple(grid.shape)} {grid.dtype}")

    @property
    def indices(self) -> torch.Tensor:
        """The finest (or only) token map, ``[B, h, w]``."""
        return self.scales[-1]

    @property
    def batch(self) -> int:
        return self.scales[0].shape[0]

    @property
    def pixel_size(self) -> tuple[int, int]:
        """(height, width) in pixels of the decoded image."""
        _, h, w = self.indices.shape
        return h * self.factor, w * self.factor

    def require(self, tokenizer: str, what: str) -> None:
        if tokenizer != self.tokenizer:
            raise BoundlessError(
                f"{what}: these tokens were made by another tokenizer ({self.tokenizer}) than the one "
                f"given ({tokenizer}); use the same VQGAN/VQVAE for encode and decode")


def fingerprint(kind: str, codebook: torch.Tensor) -> str:
    """Stable identity of a tokenizer: its kind plus a hash of its codebook values."""
    digest = hashlib.sha1(codebook.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:12]
    return f"{kind}:{tuple(codebook.shape)}:{digest}"
