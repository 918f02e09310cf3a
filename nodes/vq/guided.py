"""Pixel-guided VQGAN decoding (NUWA-Infinity's PG-VQGAN idea) for temporally steady video.

Decoding every frame of a video from its tokens alone makes details that the tokens do not pin
down (textures, edges inside a 16-px cell) come out a little differently in each frame: the video
flickers. A pixel-guided decoder also sees the *previous output frame*: a small guide encoder turns
those pixels into a feature pyramid, and after each resolution level of the (frozen) VQGAN decoder
a fusion convolution looks at the decoder features and the guide features side by side and adds a
correction. Where the new tokens agree with what the guide shows, the decoder can copy the guide's
detail; where they disagree (a moving limb) it learns to ignore it.

The guide is a separate small checkpoint tied to one VQGAN (by codebook fingerprint), so plain
``VQGAN.decode`` and every released VQGAN file stay untouched. Fusion convolutions start at zero,
so an untrained guide decodes exactly like the plain decoder.

Resolutions of the decoder levels (``L = len(ch_mult)`` levels, latent at ``H / 2^(L-1)``): level
``i > 0`` ends with an upsample, so after it features are at ``H / 2^(i-1)``; level 0 stays at ``H``.
"""
from __future__ import annotations

import json
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..common.errors import BoundlessError
from ..common.tokens import fingerprint
from ..common.weights import strict_load
from .loader import KIND as VQGAN_KIND
from .vqgan import VQGAN

KIND = "boundless.pixel_guide"


def level_scales(levels: int) -> list[int]:
    """Downscale factor of the decoder's features after each level ``i`` (index = level)."""
    return [1] + [2 ** (i - 1) for i in range(1, levels)]


class PixelGuide(nn.Module):
    """Guide encoder (pixels -> feature pyramid) and one zero-initialised fusion conv per level."""

    def __init__(self, level_widths: list[int], width: int = 16):
        super().__init__()
        pyramid_levels = max(level_scales(len(level_widths))).bit_length()   # scales 1, 2, 4, ... max
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(width, width, 3, stride=2, padding=1)
                                  for _ in range(pyramid_levels - 1))
        self.fuse = nn.ModuleList(nn.Conv2d(c + width, c, 3, padding=1) for c in level_widths)
        for conv in self.fuse:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.width = width
        self.tokenizer = ""          # fingerprint of the VQGAN this guide was trained for

    @classmethod
    def for_vqgan(cls, vqgan: VQGAN, width: int = 16) -> "PixelGuide":
        cfg = vqgan.config
        guide = cls([cfg.ch * m for m in cfg.ch_mult], width)
        guide.tokenizer = vqgan_fingerprint(vqgan)
        return guide

    def pyramid(self, guide_bchw: torch.Tensor) -> list[torch.Tensor]:
        """Guide features at scales 1, 2, 4, ... (entry k is at ``H / 2^k``)."""
        features = [F.silu(self.stem(guide_bchw))]
        for conv in self.down:
            features.append(F.silu(conv(features[-1])))
        return features

    def decode(self, vqgan: VQGAN, indices_bhw: torch.Tensor, guide_bchw: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, h, w]`` + guide pixels ``[B, 3, H, W]`` in [-1, 1] -> pixels ``[B, 3, H, W]``."""
        factor = vqgan.factor
        expected = (indices_bhw.shape[0], 3, indices_bhw.shape[1] * factor, indices_bhw.shape[2] * factor)
        if tuple(guide_bchw.shape) != expected:
            raise BoundlessError(f"the guide frame is {tuple(guide_bchw.shape)}, but the tokens decode to "
                                 f"{expected}; guide with a frame of the same size and batch")
        decoder = vqgan.decoder
        pyramid = self.pyramid(guide_bchw.to(self.stem.weight.dtype))
        z_bchw = vqgan.quantize.lookup(indices_bhw).to(vqgan.weight_dtype)        # the codebook is float32
        h = decoder.mid(decoder.conv_in(vqgan.post_quant_conv(z_bchw)))
        scales = level_scales(len(decoder.up))
        for i in reversed(range(len(decoder.up))):
            h = decoder.up[i](h)
            g = pyramid[scales[i].bit_length() - 1]
            h = h + self.fuse[i](torch.cat([h, g.to(h.dtype)], dim=1))
        return decoder.conv_out(F.silu(decoder.norm_out(h))).float()


def vqgan_fingerprint(vqgan: VQGAN) -> str:
    return fingerprint(VQGAN_KIND, vqgan.quantize.embedding.weight)


def decode_frames(vqgan: VQGAN, indices_fbhw: torch.Tensor, guide: Optional[PixelGuide] = None,
                  first_bchw: Optional[torch.Tensor] = None,
                  progress: Callable[[int, int], None] = lambda done, total: None) -> torch.Tensor:
    """Decode a video's token frames ``[F, B, h, w]`` to pixels ``[F, B, 3, H, W]`` in [-1, 1].

    Frame 0 is ``first_bchw`` when given (e.g. the image being animated, reproduced exactly), else
    a plain decode. Without a guide every later frame is decoded on its own; with one, each is
    decoded with the previous *output* frame as its guide.
    """
    if guide is not None and guide.tokenizer and guide.tokenizer != vqgan_fingerprint(vqgan):
        raise BoundlessError("this pixel guide was trained for a different VQGAN; load the guide that "
                             "belongs to the VQGAN you decode with")
    frames = []
    total = indices_fbhw.shape[0]
    with torch.no_grad():
        for f in range(total):
            if f == 0 and first_bchw is not None:
                out = first_bchw.to(vqgan.post_quant_conv.weight.device, torch.float32)
            elif guide is None or f == 0:
                out = vqgan.decode_indices(indices_fbhw[f])
            else:
                out = guide.decode(vqgan, indices_fbhw[f], frames[-1].clamp(-1, 1))
            frames.append(out)
            progress(f + 1, total)
    return torch.stack(frames)


def guide_state_dict(guide: PixelGuide) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    metadata = {"format": KIND, "tokenizer": guide.tokenizer, "width": str(guide.width)}
    return {k: v.detach().contiguous() for k, v in guide.state_dict().items()}, metadata


def load_guide(path: str) -> PixelGuide:
    """Read a guide checkpoint (safetensors written by ``guide_train``); widths come from shapes."""
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            state = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise BoundlessError(f"cannot read pixel guide {path}: {exc}; the file is damaged or not safetensors") from exc
    if metadata.get("format") != KIND or "stem.weight" not in state:
        raise BoundlessError(f"{path} is not a Boundless pixel guide (expected metadata format {KIND!r}); "
                             "train one with scripts/train_pixel_guide.py")
    width = state["stem.weight"].shape[0]
    fuse = sorted((int(k.split(".")[1]), v.shape[0]) for k, v in state.items()
                  if k.startswith("fuse.") and k.endswith(".weight"))
    guide = PixelGuide([c for _, c in fuse], width)
    strict_load(guide, {k: v.float() for k, v in state.items()}, "pixel guide")
    guide.tokenizer = metadata.get("tokenizer", "")
    return guide.eval()


def save_guide(guide: PixelGuide, path: str, extra: Optional[dict] = None) -> None:
    state, metadata = guide_state_dict(guide)
    metadata.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()})
    save_file(state, path, metadata=metadata)
