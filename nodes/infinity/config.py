"""Sizes of a NUWA-Infinity token decoder and of its Nearby Context Pool window.

Everything the checkpoint loader needs to rebuild a model is either a tensor shape or one of the
three small integer buffers the model stores (``patch_shape``, ``trained_extents``, ``num_heads``),
so a safetensors file alone is enough to load it.
"""
from __future__ import annotations

import dataclasses
import json

from ..common.errors import BoundlessError
from . import rope


@dataclasses.dataclass(frozen=True)
class Extents:
    """NCP window of a patch, in patches: columns ±w, rows ±h, and up to f frames back.

    Frames only look back (a frame never conditions on a later one), so the window of relative
    offsets holds (2w+1)(2h+1)(f+1) cells, the current patch included: 18 for (1, 1, 1).
    """

    w: int = 1
    h: int = 1
    f: int = 1

    def __post_init__(self):
        for name in ("w", "h", "f"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BoundlessError(f"extent e_{name} must be a non-negative integer, got {value!r}")

    @property
    def cells(self) -> int:
        """Number of relative offsets (dw, dh, df) in the window, the current patch included."""
        return (2 * self.w + 1) * (2 * self.h + 1) * (self.f + 1)

    def fits_in(self, trained: "Extents") -> bool:
        return self.w <= trained.w and self.h <= trained.h and self.f <= trained.f

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.w, self.h, self.f)

    def require_within(self, trained: "Extents") -> None:
        if not self.fits_in(trained):
            raise BoundlessError(
                f"extents (e_w={self.w}, e_h={self.h}, e_f={self.f}) exceed what this model was trained "
                f"for (e_w={trained.w}, e_h={trained.h}, e_f={trained.f}); use extents no larger than "
                "the trained ones (the model has no position embedding for farther patches)")


# Index of each training order in the model's order embedding table (see adc.ORDERS).
N_ORDERS = 4


@dataclasses.dataclass(frozen=True)
class InfinityConfig:
    """Hyper-parameters of the patch-level token decoder.

    n_embed: VQGAN codebook size (vocabulary). patch_h/patch_w: tokens per patch side.
    trained_extents: largest NCP window the model learned relative embeddings for.
    text_dim: width of the text context for cross-attention; 0 means no text branch.
    frame_align: video models only: every token position also receives the previous frame's state
    of the same token position (see ``model.InfinityTransformer.aligned_input``).
    align_radius: with frame alignment, how far it reaches: each position receives the previous
    frame's states of the (2r+1)² tokens around it, so content that moved up to r tokens since the
    previous frame (a camera pan) is as near as content that stayed; 0 = the same position only.
    rope_base: token geometry (``rope``): queries and keys of own and context tokens are rotated by
    their canvas coordinates with this frequency base; 0 = off (models trained before it existed).
    mirrored_scan: patches of order ``left`` / ``up`` are read in raster mirrored left–right /
    top–bottom, so every row or column starts beside the finished neighbour (``token_scan``);
    False = raster for every order (models trained before it existed).
    """

    n_embed: int = 16384
    dim: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    patch_h: int = 16
    patch_w: int = 16
    trained_extents: Extents = Extents(1, 1, 1)
    text_dim: int = 0
    n_orders: int = N_ORDERS
    frame_align: bool = False
    rope_base: int = 0
    align_radius: int = 0
    mirrored_scan: bool = False

    def __post_init__(self):
        if self.dim % self.heads:
            raise BoundlessError(f"model width {self.dim} is not divisible by {self.heads} heads; "
                                 "pick a head count that divides the width")
        for name in ("n_embed", "dim", "depth", "heads", "mlp_dim", "patch_h", "patch_w"):
            if getattr(self, name) < 1:
                raise BoundlessError(f"config {name} must be at least 1, got {getattr(self, name)}")
        if self.rope_base < 0:
            raise BoundlessError(f"rope_base must be 0 (off) or positive, got {self.rope_base}")
        if self.rope_base:
            rope.check_head_dim(self.head_dim, self.rope_axes)
        if self.frame_align and not self.trained_extents.f:
            raise BoundlessError("frame alignment needs a video model with a frame axis (trained extent e_f >= 1), "
                                 f"got extents {self.trained_extents.as_tuple()}")
        if self.align_radius and not self.frame_align:
            raise BoundlessError("align_radius is the reach of frame alignment; it needs frame_align")
        if not 0 <= self.align_radius <= min(self.patch_h, self.patch_w):
            raise BoundlessError(f"align_radius must lie in 0..{min(self.patch_h, self.patch_w)} (the patch side: "
                                 f"alignment reads the neighbouring patches only), got {self.align_radius}")

    @property
    def tokens_per_patch(self) -> int:
        return self.patch_h * self.patch_w

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def rope_axes(self) -> int:
        return rope.axes_of(self.trained_extents.f)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["trained_extents"] = list(self.trained_extents.as_tuple())
        # Files from before these options lack the fields; leaving them out keeps their fingerprints.
        if not self.frame_align:
            del data["frame_align"]
        if not self.rope_base:
            del data["rope_base"]
        if not self.align_radius:
            del data["align_radius"]
        if not self.mirrored_scan:
            del data["mirrored_scan"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "InfinityConfig":
        data = json.loads(text)
        data["trained_extents"] = Extents(*data["trained_extents"])
        return cls(**data)
