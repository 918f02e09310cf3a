"""Zero-shot editing with VAR from an image and a pixel mask (pure torch).

The authors' notebook edits at token level: tokens of the source image are kept where a keep map
says so and re-drawn elsewhere (``sampling.edit_guide`` / ``sampling.sample``). This module turns
the pixel-space inputs a user has (an image in [0, 1] and a MASK where 1 = regenerate, ComfyUI's
convention) into that keep map, and pastes the source pixels back outside the mask after decoding,
since token-level editing cannot follow a mask more finely than 16 pixels (nor feather it).
"""
from __future__ import annotations

import enum

import torch
import torch.nn.functional as F

from ..common.errors import BoundlessError
from .schedule import PIXELS_PER_TOKEN

# A token is regenerated when more than this fraction of its 16x16 pixels is masked; the slack only
# absorbs mask noise (e.g. a feathered edge), so every visibly masked token is redrawn.
MASKED_TOKEN_FRACTION = 0.01


class EditMode(str, enum.Enum):
    """The notebook's three demos: in/out-painting sample the null class, class editing a real one."""

    INPAINT = "inpaint"
    OUTPAINT = "outpaint"
    CLASS_EDIT = "class-edit"

    @property
    def uses_class(self) -> bool:
        return self is EditMode.CLASS_EDIT


def edit_label(mode: EditMode, class_id: int, num_classes: int) -> int:
    """The label to sample with: the null class for in/out-painting, ``class_id`` for class editing."""
    if not mode.uses_class:
        return num_classes
    if not 0 <= class_id < num_classes:
        raise BoundlessError(f"class-edit needs a class id in 0..{num_classes - 1}, got {class_id}; pick an "
                             "ImageNet class (in/out-painting ignore the class)")
    return class_id


def check_edit_inputs(image_bhwc: torch.Tensor, mask_bhw: torch.Tensor, side: int) -> None:
    """The image must have the model's size and the mask the image's size."""
    height, width = image_bhwc.shape[1:3]
    if (height, width) != (side, side):
        raise BoundlessError(f"this VAR model edits {side}x{side} images, got {width}x{height}; scale or crop the "
                             f"image to {side}x{side} first")
    if tuple(mask_bhw.shape[-2:]) != (height, width):
        raise BoundlessError(f"the edit mask is {mask_bhw.shape[-1]}x{mask_bhw.shape[-2]} but the image is "
                             f"{width}x{height}; give a mask of the image's size")
    if mask_bhw.shape[0] not in (1, image_bhwc.shape[0]):
        raise BoundlessError(f"got {mask_bhw.shape[0]} masks for {image_bhwc.shape[0]} images; give one mask or "
                             "one per image")


def keep_grid(mask_bhw: torch.Tensor) -> torch.Tensor:
    """Pixel MASK ``[B,H,W]`` (1 = regenerate) -> token keep map ``[B,H/16,W/16]`` of 1 = keep, 0 = redraw."""
    side_h, side_w = (s // PIXELS_PER_TOKEN for s in mask_bhw.shape[-2:])
    masked_bhw = F.adaptive_avg_pool2d(mask_bhw.float().unsqueeze(1), (side_h, side_w))[:, 0]
    return (masked_bhw <= MASKED_TOKEN_FRACTION).float()


def composite(source_bhwc: torch.Tensor, generated_bhwc: torch.Tensor, mask_bhw: torch.Tensor) -> torch.Tensor:
    """Source pixels where the mask is 0, generated ones where it is 1, blended in between."""
    weight_bhw1 = mask_bhw.float().unsqueeze(-1).to(generated_bhwc.device)
    return source_bhwc.to(generated_bhwc.device) * (1 - weight_bhw1) + generated_bhwc * weight_bhw1
