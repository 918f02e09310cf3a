"""Comic pages: panels laid out in a grid with captions (pure Pillow + torch).

Captions are word-wrapped and drawn bottom-centred on a translucent white box inside each panel, as
in the StoryDiffusion demo, with Pillow's bundled default font (Aileron, public domain; scalable
when Pillow has FreeType) instead of the demo's non-redistributable Microsoft font.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..common.errors import BoundlessError


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):   # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def wrap_text(text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels (a single word longer than the width keeps its own line)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and font.getlength(candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def draw_caption(panel: Image.Image, caption: str, font_size: int) -> Image.Image:
    """The panel with ``caption`` on a translucent white box along its bottom edge."""
    if not caption.strip():
        return panel
    font = _font(font_size)
    pad = max(2, font_size // 4)
    lines = wrap_text(caption, font, panel.width - 4 * pad)
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (font_size, 0)
    line_h = ascent + descent
    box_h = line_h * len(lines) + 2 * pad
    overlay = Image.new("RGBA", panel.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    draw.rectangle([0, panel.height - box_h, panel.width, panel.height], fill=(255, 255, 255, 200))
    y = panel.height - box_h + pad
    for line in lines:
        x = (panel.width - font.getlength(line)) / 2
        draw.text((x, y), line, font=font, fill=(0, 0, 0, 255))
        y += line_h
    return Image.alpha_composite(panel.convert("RGBA"), overlay).convert("RGB")


def comic_pages(images_bhwc: torch.Tensor, captions: Sequence[str], columns: int = 2, rows: int = 2,
                border: int = 10, caption_size: int = 0, show_captions: bool = True) -> torch.Tensor:
    """Lay ``images`` (IMAGE ``[B,H,W,C]``, reading order) out on pages of ``columns x rows`` panels.

    Returns IMAGE ``[P, H', W', 3]``; unused cells of the last page stay white. ``caption_size`` 0
    picks a size from the panel height (about 1/17 of it, the demo's 45 px at 768 px).
    """
    if images_bhwc.ndim != 4 or images_bhwc.shape[0] == 0:
        raise BoundlessError(f"Comic Page needs a batch of images [B,H,W,C], got shape {tuple(images_bhwc.shape)}")
    if len(captions) != images_bhwc.shape[0]:
        raise BoundlessError(f"{images_bhwc.shape[0]} images but {len(captions)} captions")
    if columns < 1 or rows < 1:
        raise BoundlessError("Comic Page needs at least one column and one row")
    count, height, width = images_bhwc.shape[:3]
    font_size = caption_size or max(10, round(height / 17))
    per_page = columns * rows
    page_w = columns * width + (columns + 1) * border
    page_h = rows * height + (rows + 1) * border
    array = (images_bhwc[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    pages = []
    for first in range(0, count, per_page):
        page = Image.new("RGB", (page_w, page_h), (255, 255, 255))
        for slot, index in enumerate(range(first, min(first + per_page, count))):
            panel = Image.fromarray(array[index])
            if show_captions:
                panel = draw_caption(panel, captions[index], font_size)
            row, col = divmod(slot, columns)
            page.paste(panel, (border + col * (width + border), border + row * (height + border)))
        pages.append(torch.from_numpy(np.asarray(page).copy()))
    return torch.stack(pages).float() / 255.0


def in_reading_order(order: Sequence[tuple[str, int]], identity_bhwc: torch.Tensor,
                     panels_bhwc: torch.Tensor) -> torch.Tensor:
    """Interleave identity images and panel images into the story's reading order.

    ``order`` is ``Story.reading_order()``. Panels of another size than the identity images are
    resized to it (bilinear), so a page has one cell size.
    """
    batches = {"identity": identity_bhwc, "panel": panels_bhwc}
    needed = {"identity": 0, "panel": 0}
    for kind, row in order:
        needed[kind] = max(needed[kind], row + 1)
    for kind, batch in batches.items():
        if batch.shape[0] != needed[kind]:
            raise BoundlessError(
                f"the story has {needed[kind]} {kind} images but {batch.shape[0]} were given; connect the decoded "
                f"images of the {kind} sampler (latent batch_size = Story Prompt's {kind}_count)")
    height, width = identity_bhwc.shape[1:3]
    if tuple(panels_bhwc.shape[1:3]) != (height, width):
        panels_bhwc = torch.nn.functional.interpolate(
            panels_bhwc[..., :3].movedim(-1, 1).float(), size=(height, width), mode="bilinear",
            align_corners=False).movedim(1, -1)
        batches["panel"] = panels_bhwc
    return torch.stack([batches[kind][row][..., :3].float() for kind, row in order])
