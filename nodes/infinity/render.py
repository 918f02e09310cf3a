"""Pixels from canvas states: full decodes (with 360° wrap padding) and cheap live previews.

Pure torch; the VQGAN is any object with ``decode_indices(indices [B,h,w]) -> [B,3,H,W]`` and
``factor``, so this module does not depend on the tokenizer's internals.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..common.errors import BoundlessError
from ..common.images import model_to_image
from ..common.progress import Progress, no_progress
from ..vq.tiling import pad_round
from .geometry import UNKNOWN, PatchPos
from .state import CanvasState

GREY = 0.0   # model range [-1, 1]: unknown patches render mid-grey


def require_tokenizer(state: CanvasState, tokenizer: str, factor: int) -> None:
    """Refuse to decode a state with a VQGAN other than the one its model was trained on."""
    if state.tokenizer and state.tokenizer != tokenizer:
        raise BoundlessError("this canvas was generated for another VQGAN than the one given (the tokens would "
                             "decode to noise); connect the VQGAN the Infinity model was trained with")
    if state.factor and state.factor != factor:
        raise BoundlessError(f"this canvas uses {state.factor} px per token but the VQGAN has {factor}; "
                             "connect the VQGAN the Infinity model was trained with")


def decode_state(vqgan, state: CanvasState, frame: int = 0, wrap_pad_patches: int = 1,
                 decode=None, progress: Progress = no_progress) -> torch.Tensor:
    """Decode one frame to IMAGE ``[B, H, W, 3]``; patches not generated yet come out grey.

    For a 360° canvas (``state.wrap``) the token map is padded circularly (``tiling.pad_round``) by
    ``wrap_pad_patches`` patch widths on each side before decoding and cropped afterwards, so the VQGAN sees the seam's
    real neighbours and the left and right edges join without a visible line.
    ``decode``: optional ``indices -> pixels`` function (e.g. a tiled decoder); default one pass.
    """
    decode = decode or vqgan.decode_indices
    tokens_bhw = state.frame_tokens(frame)
    unknown_bhw = tokens_bhw == UNKNOWN
    tokens_bhw = tokens_bhw.clamp(min=0)
    pad = wrap_pad_patches * state.patch_w if state.wrap else 0
    if pad:
        tokens_bhw = pad_round(tokens_bhw, pad)
    device = next(iter(vqgan.parameters())).device if hasattr(vqgan, "parameters") else torch.device("cpu")
    with torch.no_grad():
        pixels_bchw = decode(tokens_bhw.to(device)).float().cpu()
    progress(1, 1)
    f = vqgan.factor
    if pad:
        pixels_bchw = pixels_bchw[..., pad * f:-pad * f]
    if bool(unknown_bhw.any()):
        mask = F.interpolate(unknown_bhw[:, None].float(), scale_factor=f, mode="nearest").bool()
        pixels_bchw = pixels_bchw.masked_fill(mask.expand_as(pixels_bchw), GREY)
    return model_to_image(pixels_bchw)


class PatchPreview:
    """A small RGB picture of the growing canvas, updated one decoded patch at a time.

    Decoding only the finished patch keeps the preview's cost per patch constant however large the
    canvas is (the final image is decoded once, at the end, by ``decode_state``).
    """

    def __init__(self, vqgan, state: CanvasState, max_side: int = 1024):
        self.vqgan = vqgan
        _, rows, cols = state.grid
        f = vqgan.factor
        self.patch_px = (state.patch_h * f, state.patch_w * f)
        full_h, full_w = rows * self.patch_px[0], cols * self.patch_px[1]
        self.scale = min(1.0, max_side / max(full_h, full_w))
        self.cell = (max(1, round(self.patch_px[0] * self.scale)), max(1, round(self.patch_px[1] * self.scale)))
        self.image = torch.full((rows * self.cell[0], cols * self.cell[1], 3), 0.5)

    def update(self, state: CanvasState, pos: PatchPos) -> Optional[torch.Tensor]:
        """Decode patch ``pos`` of batch item 0 into the picture; return IMAGE ``[1, h, w, 3]``."""
        frame, row, col = pos
        ph, pw = state.patch_h, state.patch_w
        tokens = state.tokens[:1, frame, row * ph:(row + 1) * ph, col * pw:(col + 1) * pw]
        device = next(iter(self.vqgan.parameters())).device
        with torch.no_grad():
            pixels = self.vqgan.decode_indices(tokens.to(device)).float().cpu()
        cell = F.interpolate(pixels, size=self.cell, mode="area") if self.cell != self.patch_px else pixels
        y, x = row * self.cell[0], col * self.cell[1]
        self.image[y:y + self.cell[0], x:x + self.cell[1]] = model_to_image(cell)[0]
        return self.image[None].clone()
