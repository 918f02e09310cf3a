"""Tiled VQGAN encode/decode for canvases larger than one pass can hold, and the size policy.

GroupNorm statistics and attention span the whole input, so a single pass is what the reference
computes and is the default. For large canvases we run tiles that carry a margin of real
neighbouring context on every side and keep only each tile's centre: memory is bounded by the tile
size, and seams shrink as the margin grows (a margin of a few tokens makes them invisible on the
demo model, see tests/test_vq_tiling.py for the measured error).

Sizes that are not a multiple of the downsampling factor ``f`` follow one documented policy:
``pad`` (default) replicate-pads right/bottom up to the next multiple, so no pixel is lost and the
decoded image is the padded size; ``crop`` drops the right/bottom remainder; ``error`` refuses.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..common.errors import BoundlessError
from ..common.images import model_to_image
from ..common.progress import Preview, Progress, no_progress
from .temporal import latents, quantize_stable

SIZE_POLICIES = ("pad", "crop", "error")
MAX_SIDE = 1 << 17          # 131072 px: larger canvases belong to the streaming writers
PANORAMA_MARGIN_PX = 128    # how far round a 360° panorama the tokenizer sees at each end (frame codes reach ~48 px)
OUTPAINT_MARGIN_PX = 64     # how far the tokenizer sees a mirror image past an edge that will be outpainted
SIDES = ("left", "right", "up", "down")


def fit_to_factor(x_bchw: torch.Tensor, factor: int, policy: str) -> torch.Tensor:
    """Apply the size policy so height and width are multiples of ``factor``."""
    _, _, h, w = x_bchw.shape
    if h > MAX_SIDE or w > MAX_SIDE:
        raise BoundlessError(f"image of {w}x{h} px is larger than the {MAX_SIDE} px per side that VQGAN "
                             "Encode accepts; split it or use the Infinity streaming canvas writer")
    if h % factor == 0 and w % factor == 0:
        return x_bchw
    if policy == "error":
        raise BoundlessError(f"image is {w}x{h} px, not a multiple of the tokenizer's factor {factor}; "
                             f"resize it, or set size_policy to 'pad' or 'crop'")
    if policy == "crop":
        nh, nw = h - h % factor, w - w % factor
        if nh == 0 or nw == 0:
            raise BoundlessError(f"image of {w}x{h} px is smaller than one {factor}x{factor} token; "
                                 "use size_policy 'pad' or a larger image")
        return x_bchw[:, :, :nh, :nw]
    if policy == "pad":
        return F.pad(x_bchw, (0, (-w) % factor, 0, (-h) % factor), mode="replicate")
    raise BoundlessError(f"unknown size policy {policy!r}; choose one of {SIZE_POLICIES}")


def single_pass_bytes(config, batch: int, height: int, width: int) -> int:
    """Rough peak memory of one encoder or decoder pass over a batch of height x width pixels.

    Dominated by a few live full-resolution feature maps of the first level, and by the attention
    matrix (positions x positions) of each level that has attention: attention is global, so it
    grows with the square of the area.
    """
    feature = batch * height * width * config.ch * config.ch_mult[0] * 4
    attention = 0
    for level in (*config.attn_levels, len(config.ch_mult) - 1 if config.mid_attn else None):
        if level is not None:
            positions = (height >> level) * (width >> level)
            attention = max(attention, batch * positions * positions * 4)
    return 6 * feature + 2 * attention


def check_fits(config, batch: int, height: int, width: int, budget_bytes: int, tile_px: int,
               margin_px: int) -> None:
    """Refuse a pass that would not fit in ``budget_bytes``, naming the tile size that would."""
    side_h = height if tile_px <= 0 else min(height, tile_px + 2 * margin_px)
    side_w = width if tile_px <= 0 else min(width, tile_px + 2 * margin_px)
    need = single_pass_bytes(config, batch, side_h, side_w)
    if need <= budget_bytes:
        return
    suggestion = 512
    while suggestion > 64 and single_pass_bytes(config, batch, suggestion + 2 * margin_px,
                                                suggestion + 2 * margin_px) > budget_bytes:
        suggestion //= 2
    raise BoundlessError(
        f"{width}x{height} px (batch {batch}) needs about {need / 2**30:.1f} GiB in one "
        f"{'tile' if tile_px > 0 else 'pass'}, but only {budget_bytes / 2**30:.1f} GiB is free; "
        f"set tile_size to {suggestion} (or smaller) to process the canvas in tiles")


def check_output_fits(batch: int, height: int, width: int, free_bytes: int, what: str) -> None:
    """Refuse to decode into an IMAGE (float32, B x H x W x 3) larger than the memory it lands in:
    tiles bound the decoder's work, not the size of the finished picture."""
    need = batch * height * width * 3 * 4
    if need > free_bytes:
        raise BoundlessError(
            f"{what}: the decoded image would be {width}x{height} px x {batch} ({need / 2**30:.1f} GiB as a ComfyUI "
            f"IMAGE), more than the {free_bytes / 2**30:.1f} GiB of free memory; decode a smaller part (crop the "
            "canvas or lower the batch), or write wide canvases to disk with Infinity Stream Canvas")


def _tile_starts(total: int, tile: int) -> list[int]:
    """Starts of non-overlapping tiles covering [0, total)."""
    return list(range(0, total, tile))


def _run_tiled(grid_h: int, grid_w: int, tile: int, margin: int,
               run: Callable[[int, int, int, int], torch.Tensor],
               place: Callable[[torch.Tensor, int, int, int, int, int, int], None],
               progress: Progress, preview: Preview = None) -> None:
    """Shared tile walk over a grid (in tokens): run(y0,y1,x0,x1) on the tile plus margin, then
    place the central part. Coordinates are clipped to the grid."""
    ys, xs = _tile_starts(grid_h, tile), _tile_starts(grid_w, tile)
    total, done = len(ys) * len(xs), 0
    for y in ys:
        for x in xs:
            y1, x1 = min(y + tile, grid_h), min(x + tile, grid_w)
            ry0, rx0 = max(0, y - margin), max(0, x - margin)
            ry1, rx1 = min(grid_h, y1 + margin), min(grid_w, x1 + margin)
            out = run(ry0, ry1, rx0, rx1)
            place(out, y - ry0, x - rx0, y, y1, x, x1)
            done += 1
            progress(done, total, preview)


def wrap_margin(width_px: int, factor: int, wrap_px: int) -> int:
    """The circular margin (px) a 360° encode or decode adds on each side: ``wrap_px``, at most the
    width, in whole tokens. 0 = not a 360° picture."""
    if wrap_px < 0:
        raise BoundlessError(f"the 360° margin must be >= 0 px (0 = not a panorama), got {wrap_px}")
    return min(wrap_px, width_px) // factor * factor


def pad_round(x: torch.Tensor, margin: int) -> torch.Tensor:
    """``x`` with ``margin`` of its own other end on either side of its last dimension."""
    return torch.cat([x[..., -margin:], x, x[..., :margin]], dim=-1)


def mirror_pads(height_px: int, width_px: int, factor: int, mirror_px: int, sides) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) px of mirror image an encode adds past ``sides``: ``mirror_px``, at
    most one pixel less than the picture (a reflection cannot reach further), in whole tokens."""
    if mirror_px < 0:
        raise BoundlessError(f"the mirrored margin must be >= 0 px (0 = none), got {mirror_px}")
    unknown = set(sides) - set(SIDES)
    if unknown:
        raise BoundlessError(f"unknown side(s) {sorted(unknown)} to mirror; choose from {', '.join(SIDES)}")
    across = min(mirror_px, width_px - 1) // factor * factor
    along = min(mirror_px, height_px - 1) // factor * factor
    return tuple(margin if side in sides else 0
                 for side, margin in (("left", across), ("right", across), ("up", along), ("down", along)))


def encode_tiled(model, x_bchw: torch.Tensor, tile_px: int = 0, margin_px: int = 64,
                 progress: Progress = no_progress, stability: float = 0.0, wrap_px: int = 0,
                 mirror_px: int = 0, mirror_sides=()) -> torch.Tensor:
    """Image [B,3,H,W] (multiples of f) -> indices [B,h,w]; tile_px=0 means one exact pass.

    ``stability`` > 0 takes the batch as video frames in time order and quantizes them with
    temporal hysteresis of that tolerance (``temporal.quantize_stable``). Hysteresis works per token
    position, so tiles quantize their own columns of frames and tiling changes nothing about it.

    ``wrap_px`` > 0: the images are seamless 360° panoramas, encoded with that much of their own other
    end on either side (``wrap_margin``) and the margins' tokens dropped. Why: the encoder treats a
    picture's left and right borders as borders. Encoded plainly, a world panorama's first token
    column and last three carry border codes, not what is there (8 panoramas on
    ``boundless_world_f16_m256``: 2–23 % of those tokens keep their code when encoded round, against
    92 % of the inside ones). Training crops and rolled 360° canvases put such columns inside a
    canvas, as if the picture had a border there.

    ``mirror_px`` > 0: past each of ``mirror_sides`` ("left", "right", "up", "down") the encoder sees
    that much of the picture's mirror image (``mirror_pads``), and those tokens are dropped. For
    pictures that will be outpainted there: encoded plainly, the edge's token lines are border codes,
    which a continuation keeps as a dark bar at the cut; seeing a plausible continuation instead, the
    encoder gives them codes of picture content (BENCHMARKS.md "Outpainting from a mirrored edge").
    A 360° encode already joins the left and right ends, so it mirrors only up and down.
    """
    f = model.factor
    if mirror_px and mirror_sides:
        sides = [side for side in mirror_sides if not (wrap_px and side in ("left", "right"))]
        left, right, top, bottom = mirror_pads(x_bchw.shape[-2], x_bchw.shape[-1], f, mirror_px, sides)
        padded = F.pad(x_bchw, (left, right, top, bottom), mode="reflect") if left + right + top + bottom else x_bchw
        tokens = encode_tiled(model, padded, tile_px, margin_px, progress, stability, wrap_px)
        return tokens[..., top // f:tokens.shape[-2] - bottom // f, left // f:tokens.shape[-1] - right // f]
    wrap = wrap_margin(x_bchw.shape[-1], f, wrap_px)
    if wrap:
        skip = wrap // f
        padded = encode_tiled(model, pad_round(x_bchw, wrap), tile_px, margin_px, progress, stability)
        return padded[..., skip:padded.shape[-1] - skip]
    b, _, h, w = x_bchw.shape
    if stability < 0:
        raise BoundlessError(f"temporal stability must be >= 0 (0 = each image alone), got {stability}")

    def indices(x_part):
        if not stability:
            return model.encode_indices(x_part)
        return quantize_stable(model.quantize.embedding.weight, latents(model, x_part), stability)

    if tile_px <= 0 or (tile_px >= h and tile_px >= w):
        return indices(x_bchw)
    if tile_px % f or margin_px % f:
        raise BoundlessError(f"tile size {tile_px} and margin {margin_px} must be multiples of the factor {f}")
    tile, margin = tile_px // f, margin_px // f
    out_bhw = torch.empty(b, h // f, w // f, dtype=torch.int64, device=x_bchw.device)

    def run(y0, y1, x0, x1):
        return indices(x_bchw[:, :, y0 * f:y1 * f, x0 * f:x1 * f])

    def place(part, oy, ox, y0, y1, x0, x1):
        out_bhw[:, y0:y1, x0:x1] = part[:, oy:oy + y1 - y0, ox:ox + x1 - x0]

    _run_tiled(h // f, w // f, tile, margin, run, place, progress)
    return out_bhw


def decode_tiled(model, indices_bhw: torch.Tensor, tile_px: int = 0, margin_px: int = 64,
                 progress: Progress = no_progress, out_device: torch.device | None = None,
                 wrap_px: int = 0) -> torch.Tensor:
    """Indices [B,h,w] -> image [B,3,h*f,w*f] (unclamped); tile_px=0 means one exact pass.

    Tiles are written to ``out_device`` (default: the indices' device) as they finish, so a canvas
    larger than the compute device's memory can be decoded to CPU RAM.

    ``wrap_px`` > 0: the tokens are a 360° panorama, decoded with that much of their other end on either
    side and the margins' pixels dropped, so the decoder draws no border at the ends and the seam
    closes as it would anywhere inside.
    """
    f = model.factor
    wrap = wrap_margin(indices_bhw.shape[-1] * f, f, wrap_px)
    if wrap:
        padded = decode_tiled(model, pad_round(indices_bhw, wrap // f), tile_px, margin_px, progress, out_device)
        return padded[..., wrap:padded.shape[-1] - wrap]
    b, gh, gw = indices_bhw.shape
    if tile_px <= 0 or (tile_px >= gh * f and tile_px >= gw * f):
        return model.decode_indices(indices_bhw).to(out_device or indices_bhw.device)
    if tile_px % f or margin_px % f:
        raise BoundlessError(f"tile size {tile_px} and margin {margin_px} must be multiples of the factor {f}")
    tile, margin = tile_px // f, margin_px // f
    out_bchw = torch.empty(b, model.config.out_ch, gh * f, gw * f, device=out_device or indices_bhw.device)

    def run(y0, y1, x0, x1):
        return model.decode_indices(indices_bhw[:, y0:y1, x0:x1])

    def place(part, oy, ox, y0, y1, x0, x1):
        out_bchw[:, :, y0 * f:y1 * f, x0 * f:x1 * f] = \
            part[:, :, oy * f:(oy + y1 - y0) * f, ox * f:(ox + x1 - x0) * f].to(out_bchw.device)

    _run_tiled(gh, gw, tile, margin, run, place, progress, preview=lambda: model_to_image(out_bchw[:1]))
    return out_bchw
