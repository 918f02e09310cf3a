"""Train and measure a pixel guide (``guided.PixelGuide``) for a frozen VQGAN on frame sequences.

Each step takes random frames ``t`` of the training clips, the VQGAN's tokens of frame ``t`` and a
guide picture, and fits the guided decode to the true frame ``t`` (L1 + MSE). The guide is the true
previous frame most of the time; sometimes the plain decode of the previous frame (at inference the
guide is an earlier *output*, never the truth) and sometimes an unrelated frame (so the guide learns
to ignore pixels that the tokens contradict). Only the guide's weights train.
"""
from __future__ import annotations

import random
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .guided import PixelGuide, decode_frames
from .vqgan import VQGAN

# How the guide picture of a training sample is chosen.
GUIDE_TRUE_PREVIOUS, GUIDE_DECODED_PREVIOUS = 0.7, 0.9   # cumulative: else an unrelated frame


@torch.no_grad()
def encode_clips(vqgan: VQGAN, clips_ntchw: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Tokens ``[N, T, h, w]`` of clips ``[N, T, 3, H, W]`` in [-1, 1]."""
    flat = clips_ntchw.flatten(0, 1)
    tokens = [vqgan.encode_indices(flat[start:start + batch]) for start in range(0, flat.shape[0], batch)]
    return torch.cat(tokens).unflatten(0, clips_ntchw.shape[:2])


@torch.no_grad()
def decode_clips(vqgan: VQGAN, tokens_nthw: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Plain decodes ``[N, T, 3, H, W]`` (clamped to [-1, 1]) of token clips ``[N, T, h, w]``."""
    flat = tokens_nthw.flatten(0, 1)
    pixels = [vqgan.decode_indices(flat[start:start + batch]).clamp(-1, 1) for start in range(0, flat.shape[0], batch)]
    return torch.cat(pixels).unflatten(0, tokens_nthw.shape[:2])


def train_guide(vqgan: VQGAN, clips_ntchw: torch.Tensor, *, minutes: float, steps: int = 100000, batch: int = 8,
                lr: float = 1e-3, width: int = 16, crop_tokens: int = 0, seed: int = 0,
                log: Callable[[dict], None] = lambda stats: None) -> PixelGuide:
    """A guide for ``vqgan`` fitted on cyclic clips ``[N, T, 3, H, W]`` (frame T-1 precedes frame 0).

    crop_tokens: train on random token-aligned crops of this many tokens per side (0 = whole
    frames); the guide is convolutional, and crops make a step several times cheaper on a CPU.
    """
    vqgan = vqgan.eval().requires_grad_(False)
    tokens_nthw = encode_clips(vqgan, clips_ntchw)
    plain_ntchw = decode_clips(vqgan, tokens_nthw)
    guide = PixelGuide.for_vqgan(vqgan, width).train()
    optimizer = torch.optim.Adam(guide.parameters(), lr=lr)
    rng = random.Random(seed)
    n, t = tokens_nthw.shape[:2]
    started = time.time()
    for step in range(1, steps + 1):
        picks = [(rng.randrange(n), rng.randrange(t)) for _ in range(batch)]
        guides = []
        for i, f in picks:
            roll = rng.random()
            if roll < GUIDE_TRUE_PREVIOUS:
                guides.append(clips_ntchw[i, f - 1])
            elif roll < GUIDE_DECODED_PREVIOUS:
                guides.append(plain_ntchw[i, f - 1])
            else:
                guides.append(clips_ntchw[rng.randrange(n), rng.randrange(t)])
        target_bchw = torch.stack([clips_ntchw[i, f] for i, f in picks])
        tokens_bhw = torch.stack([tokens_nthw[i, f] for i, f in picks])
        guide_bchw = torch.stack(guides)
        if crop_tokens and crop_tokens < min(tokens_bhw.shape[-2:]):
            y = rng.randrange(tokens_bhw.shape[-2] - crop_tokens + 1)
            x = rng.randrange(tokens_bhw.shape[-1] - crop_tokens + 1)
            tokens_bhw = tokens_bhw[:, y:y + crop_tokens, x:x + crop_tokens]
            f, side = vqgan.factor, crop_tokens * vqgan.factor
            target_bchw = target_bchw[..., y * f:y * f + side, x * f:x * f + side]
            guide_bchw = guide_bchw[..., y * f:y * f + side, x * f:x * f + side]
        out_bchw = guide.decode(vqgan, tokens_bhw, guide_bchw)
        loss = (out_bchw - target_bchw).abs().mean() + F.mse_loss(out_bchw, target_bchw)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step == 1 or step % 50 == 0:
            log({"step": step, "loss": round(float(loss.detach()), 5), "min": round((time.time() - started) / 60, 2)})
        if time.time() - started > minutes * 60:
            break
    return guide.eval()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(a.clamp(-1, 1).float(), b.float()).item()
    return float(10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-12))))


@torch.no_grad()
def evaluate(vqgan: VQGAN, guide: Optional[PixelGuide], clips_ntchw: torch.Tensor) -> dict:
    """Decode each clip from its tokens, frame 0 given (as when animating an image), and compare.

    psnr: against the true frames 1..T-1. temporal_error: mean |(out_t - out_t-1) - (true_t - true_t-1)|,
    the change between frames that the true video does not have (flicker), in [-1, 1] units.
    """
    tokens_nthw = encode_clips(vqgan, clips_ntchw)
    out_ntchw = torch.stack([decode_frames(vqgan, tokens_nthw[i][:, None], guide, clips_ntchw[i, :1])[:, 0]
                             for i in range(clips_ntchw.shape[0])]).clamp(-1, 1)
    motion_true = clips_ntchw[:, 1:] - clips_ntchw[:, :-1]
    motion_out = out_ntchw[:, 1:] - out_ntchw[:, :-1]
    return {"psnr_db": round(psnr(out_ntchw[:, 1:], clips_ntchw[:, 1:]), 3),
            "temporal_error": round(float((motion_out - motion_true).abs().mean()), 5)}
